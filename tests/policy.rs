//! Policies on the memory engine, on paused time: each algorithm and action,
//! shadow windows, all-or-nothing across windows, bans, lists, costs, tiers,
//! headers, metrics, violations, and hostile keys.

use ratesync::policy::{Action, Decision, HeaderStyle, Policy, Request};
use ratesync::Registry;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const S: Duration = Duration::from_secs(1);

async fn policy(toml: &str) -> Policy {
    ratesync::testing::registry(toml).await.policy("p").unwrap()
}

fn ip(s: &str) -> Request {
    Request::new().ip(s.parse::<IpAddr>().unwrap())
}

/// How many of `n` checks of `req` are admitted.
async fn admitted(p: &Policy, req: &Request, n: usize) -> usize {
    let mut ok = 0;
    for _ in 0..n {
        ok += usize::from(p.check(req).await.unwrap().allowed);
    }
    ok
}

async fn advance(d: Duration) {
    tokio::time::advance(d).await;
}

#[tokio::test(start_paused = true)]
async fn every_algorithm_holds_its_limit_and_refills() {
    for algorithm in [
        "sliding_window",
        "sliding_counter",
        "token_bucket",
        "fixed_window",
    ] {
        let p = policy(&format!(
            "[policies.p]\nalgorithm = \"{algorithm}\"\nwindows = [{{ window = \"1m\", limit = 5 }}]"
        ))
        .await;
        let a = ip("192.0.2.1");
        assert_eq!(admitted(&p, &a, 8).await, 5, "{algorithm}");
        // Another key has its own count.
        assert_eq!(admitted(&p, &ip("192.0.2.2"), 8).await, 5, "{algorithm}");
        let refused = p.check(&a).await.unwrap();
        assert_eq!(refused.action, Action::Throttle, "{algorithm}");
        let retry = refused.retry_after.unwrap();
        assert!(
            retry > Duration::ZERO && retry <= 62 * S,
            "{algorithm}: {retry:?}"
        );
        advance(retry).await;
        assert!(
            p.check(&a).await.unwrap().allowed,
            "{algorithm} after {retry:?}"
        );
        advance(62 * S).await;
        assert_eq!(
            admitted(&p, &a, 8).await,
            5,
            "{algorithm} after a whole window"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn exact_sliding_window_never_admits_more_than_its_limit_in_any_window() {
    let p = policy("[policies.p]\nwindows = [{ window = \"10s\", limit = 3 }]").await;
    let a = ip("192.0.2.1");
    let mut grants = Vec::new();
    for step in 0..400u64 {
        if p.check(&a).await.unwrap().allowed {
            grants.push(step * 250);
        }
        advance(Duration::from_millis(250)).await;
    }
    for (i, &t) in grants.iter().enumerate() {
        let within = grants[..=i].iter().filter(|&&u| u + 10_000 > t).count();
        assert!(within <= 3, "{within} grants in the 10 s before {t} ms");
    }
    // 100 s at 3 per 10 s.
    assert!(grants.len() >= 29 && grants.len() <= 30, "{}", grants.len());
}

#[tokio::test(start_paused = true)]
async fn a_refused_request_takes_from_no_window() {
    let p = policy(
        "[policies.p]\nwindows = [\n{ window = \"1s\", limit = 2 },\n{ window = \"1h\", limit = 10 },\n{ window = \"1m\", limit = 100, action = \"monitor\" },\n]",
    )
    .await;
    let a = ip("192.0.2.1");
    assert_eq!(admitted(&p, &a, 2).await, 2);
    // Ten refusals by the 1 s window: the hourly and monitor counts stay at 2.
    assert_eq!(admitted(&p, &a, 10).await, 0);
    let d = p.eval(&a).await.unwrap();
    let remaining: Vec<u32> = d.windows.iter().map(|w| w.remaining).collect();
    assert_eq!(remaining, [0, 8, 98]);
    // So the hour still has 8 left: 4 seconds of 2 each.
    let mut ok = 0;
    for _ in 0..6 {
        advance(S).await;
        ok += admitted(&p, &a, 3).await;
    }
    assert_eq!(ok, 8);
    let d = p.check(&a).await.unwrap();
    assert_eq!((d.allowed, d.window), (false, Some("1h")));
}

#[tokio::test(start_paused = true)]
async fn shadow_windows_never_refuse_nor_stop_the_others() {
    let p = policy(
        "[policies.p]\nwindows = [\n{ window = \"1m\", limit = 2, action = \"monitor\", name = \"shadow\" },\n{ window = \"1m\", limit = 5, name = \"real\" },\n]",
    )
    .await;
    let a = ip("192.0.2.1");
    let mut decisions = Vec::new();
    for _ in 0..7 {
        decisions.push(p.check(&a).await.unwrap());
    }
    let allowed: Vec<bool> = decisions.iter().map(|d| d.allowed).collect();
    assert_eq!(allowed, [true, true, true, true, true, false, false]);
    let would: Vec<bool> = decisions.iter().map(|d| d.would_deny).collect();
    assert_eq!(would, [false, false, true, true, true, true, true]);
    assert!(decisions[2].violated && decisions[2].action == Action::Allow);
    // The shadow window counted only what it had room for.
    assert_eq!(decisions[4].windows[0].remaining, 0);
    // Shadow windows are not advertised.
    let h = decisions[4].headers_in(HeaderStyle::Draft);
    assert_eq!(h[0], ("RateLimit-Policy", "\"real\";q=5;w=60".to_string()));
    let m = p.metrics();
    assert_eq!(
        (
            m.total_requests,
            m.allowed_requests,
            m.throttled,
            m.shadow_would_deny
        ),
        (7, 5, 2, 3)
    );
    assert_eq!(m.windows["shadow"], (0, 5));
    assert_eq!(m.windows["real"], (2, 0));
}

#[tokio::test(start_paused = true)]
async fn monitor_mode_admits_all_and_counts_as_enforcing_would() {
    let p = policy(
        "[policies.p]\nmode = \"monitor\"\ndeny = [\"203.0.113.0/24\"]\nwindows = [{ window = \"1m\", limit = 3, action = \"block\", block_duration = \"1h\" }]",
    )
    .await;
    let a = ip("192.0.2.1");
    let ds: Vec<Decision> = {
        let mut v = Vec::new();
        for _ in 0..5 {
            v.push(p.check(&a).await.unwrap());
        }
        v
    };
    assert!(ds.iter().all(|d| d.allowed));
    assert_eq!(ds.iter().filter(|d| d.would_deny).count(), 2);
    // Nobody is banned in monitor mode: the window refills after a minute.
    advance(61 * S).await;
    assert!(!p.check(&a).await.unwrap().would_deny);
    let denied = p.check(&ip("203.0.113.77")).await.unwrap();
    assert!(denied.allowed && denied.would_deny && denied.action == Action::Deny);
    assert_eq!(p.metrics().bans_started, 0);
}

#[tokio::test(start_paused = true)]
async fn a_block_window_bans_the_key_for_its_block_duration() {
    let p = policy(
        "[policies.p]\nwindows = [\n{ window = \"1s\", limit = 10 },\n{ window = \"1m\", limit = 3, action = \"block\", block_duration = \"15m\", name = \"abuse\" },\n]",
    )
    .await;
    let a = ip("192.0.2.1");
    assert_eq!(admitted(&p, &a, 3).await, 3);
    let ban = p.check(&a).await.unwrap();
    assert_eq!((ban.allowed, ban.action), (false, Action::Block));
    assert_eq!(ban.retry_after, Some(15 * 60 * S));
    assert!(ban.blocked_until.is_some());
    // Banned for 15 minutes, although the minute window refills after one.
    advance(5 * 60 * S).await;
    let still = p.check(&a).await.unwrap();
    assert_eq!((still.allowed, still.action), (false, Action::Block));
    assert_eq!(still.retry_after, Some(10 * 60 * S));
    assert_eq!(
        still.headers_in(HeaderStyle::None),
        [("Retry-After", "600".to_string())]
    );
    // Other keys are untouched.
    assert!(p.check(&ip("192.0.2.2")).await.unwrap().allowed);
    advance(10 * 60 * S).await;
    assert!(p.check(&a).await.unwrap().allowed);
    assert_eq!(p.metrics().bans_started, 1);
}

#[tokio::test(start_paused = true)]
async fn a_zero_block_duration_refuses_only_the_excess() {
    let p = policy(
        "[policies.p]\nwindows = [{ window = \"1s\", limit = 1, action = \"block\", block_duration = \"0s\" }]",
    )
    .await;
    let a = ip("192.0.2.1");
    assert!(p.check(&a).await.unwrap().allowed);
    let d = p.check(&a).await.unwrap();
    assert_eq!(
        (d.allowed, d.action, d.blocked_until),
        (false, Action::Block, None)
    );
    advance(S).await;
    assert!(p.check(&a).await.unwrap().allowed);
}

#[tokio::test(start_paused = true)]
async fn manual_bans_hold_and_lift() {
    let p =
        policy("[policies.p]\nkey = \"user\"\nwindows = [{ window = \"1s\", limit = 100 }]").await;
    let u = Request::new().user("mallory");
    assert!(!p.block(&u, 30 * S, "abuse report").await.unwrap());
    let d = p.check(&u).await.unwrap();
    assert_eq!(
        (d.allowed, d.action, d.retry_after),
        (false, Action::Block, Some(30 * S))
    );
    assert!(
        p.check(&Request::new().user("alice"))
            .await
            .unwrap()
            .allowed
    );
    let listed = p.list_blocks().await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(
        (
            listed[0].key.as_str(),
            listed[0].reason.as_str(),
            listed[0].left
        ),
        ("p.mallory", "abuse report", 30 * S)
    );
    // A second ban of the key replaces its listing, whatever the reason says.
    p.block(&u, 60 * S, "again\nand again").await.unwrap();
    let listed = p.list_blocks().await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(
        (listed[0].reason.as_str(), listed[0].left),
        ("again and again", 60 * S)
    );
    assert!(p.unblock(&u).await.unwrap());
    assert!(p.check(&u).await.unwrap().allowed);
    assert_eq!(p.list_blocks().await.unwrap(), []);
}

#[tokio::test(start_paused = true)]
async fn bans_a_check_sets_are_listed_until_they_end() {
    let p = policy(
        "[policies.p]\nwindows = [{ window = \"1s\", limit = 1, action = \"block\", block_duration = \"1m\", name = \"burst\" }]",
    )
    .await;
    let (a, b) = (ip("192.0.2.1"), ip("192.0.2.2"));
    for client in [&a, &a, &b] {
        p.check(client).await.unwrap();
    }
    advance(10 * S).await;
    p.check(&b).await.unwrap();
    p.check(&b).await.unwrap();
    // The index is written by a task behind the check: let it run.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    let listed = p.list_blocks().await.unwrap();
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert_eq!(
        (
            listed[0].key.as_str(),
            listed[0].reason.as_str(),
            listed[0].left
        ),
        ("p.192=2E0=2E2=2E2", "window `burst` full", 60 * S)
    );
    assert_eq!(
        (listed[1].key.as_str(), listed[1].left),
        ("p.192=2E0=2E2=2E1", 50 * S)
    );
    advance(50 * S).await;
    assert_eq!(p.list_blocks().await.unwrap().len(), 1);
    advance(10 * S).await;
    assert_eq!(p.list_blocks().await.unwrap(), []);
}

#[tokio::test(start_paused = true)]
async fn lists_match_keys_and_ranges_and_count_nothing() {
    let p = policy(
        "[policies.p]\nkey = \"api_key\"\nexempt = [\"internal-service-1\", \"10.0.0.0/8\", \"2001:db8::/32\"]\ndeny = [\"203.0.113.0/24\", \"leaked-key\"]\nwindows = [{ window = \"1m\", limit = 1 }]",
    )
    .await;
    let key = |k: &str, addr: &str| Request::new().api_key(k).ip(addr.parse().unwrap());
    for _ in 0..3 {
        assert_eq!(
            p.check(&key("internal-service-1", "198.51.100.1"))
                .await
                .unwrap()
                .action,
            Action::Exempt
        );
        assert_eq!(
            p.check(&key("k", "10.9.8.7")).await.unwrap().action,
            Action::Exempt
        );
        assert_eq!(
            p.check(&key("k", "2001:db8:1::5")).await.unwrap().action,
            Action::Exempt
        );
        assert_eq!(
            p.check(&key("k", "::ffff:10.0.0.1")).await.unwrap().action,
            Action::Exempt
        );
    }
    let denied = p.check(&key("k", "203.0.113.200")).await.unwrap();
    assert_eq!(
        (denied.allowed, denied.action, denied.status()),
        (false, Action::Deny, Some(403))
    );
    assert!(denied.problem_details().unwrap().contains("\"status\":403"));
    assert_eq!(
        p.check(&key("leaked-key", "198.51.100.1"))
            .await
            .unwrap()
            .action,
        Action::Deny
    );
    // Exempt requests took nothing: key `k` still has its one request.
    assert!(p.check(&key("k", "198.51.100.1")).await.unwrap().allowed);
    assert!(!p.check(&key("k", "198.51.100.1")).await.unwrap().allowed);
    let m = p.metrics();
    assert_eq!(
        (m.exempt, m.denied, m.whitelisted_count, m.blacklisted_count),
        (12, 2, 3, 2)
    );
}

#[tokio::test(start_paused = true)]
async fn weighted_costs_count_in_every_window() {
    let p = policy(
        "[policies.p]\ncost = 2\nwindows = [{ window = \"1m\", limit = 10 }, { window = \"1m\", limit = 7, algorithm = \"token_bucket\", name = \"tb\" }]",
    )
    .await;
    let a = ip("192.0.2.1");
    // Default cost 2: three fit the bucket of 7.
    assert_eq!(admitted(&p, &a, 5).await, 3);
    let d = p.check(&a.clone().cost(1)).await.unwrap();
    assert!(d.allowed);
    assert_eq!(
        d.windows.iter().map(|w| w.remaining).collect::<Vec<_>>(),
        [3, 0]
    );
    // A cost no window can ever hold is refused.
    assert!(!p.check(&a.clone().cost(11)).await.unwrap().allowed);
    assert!(p.check(&a.clone().cost(0)).await.is_err());
}

#[tokio::test(start_paused = true)]
async fn tiers_replace_the_default_windows() {
    let p = policy(
        "[policies.p]\nkey = \"user\"\nwindows = [{ window = \"1s\", limit = 2 }]\n[policies.p.tiers.pro]\nwindows = [{ window = \"1s\", limit = 5 }]",
    )
    .await;
    let free = Request::new().user("a");
    let pro = Request::new().user("b").tier("pro");
    let unknown = Request::new().user("c").tier("platinum");
    assert_eq!(admitted(&p, &free, 10).await, 2);
    assert_eq!(admitted(&p, &pro, 10).await, 5);
    assert_eq!(admitted(&p, &unknown, 10).await, 2);
    assert_eq!(p.check(&pro).await.unwrap().tier.as_deref(), Some("pro"));
    assert_eq!(p.check(&unknown).await.unwrap().tier, None);
}

#[tokio::test(start_paused = true)]
async fn keys_of_several_parts_and_headers() {
    let p = policy(
        "[policies.p]\nkey = [\"route\", \"header:X-Tenant\"]\nwindows = [{ window = \"1m\", limit = 1 }]",
    )
    .await;
    let r = |route: &str, tenant: &str| Request::new().route(route).header("x-tenant", tenant);
    assert!(p.check(&r("/a", "acme")).await.unwrap().allowed);
    assert!(!p.check(&r("/a", "acme")).await.unwrap().allowed);
    assert!(p.check(&r("/b", "acme")).await.unwrap().allowed);
    assert!(p.check(&r("/a", "other")).await.unwrap().allowed);
    // Parts cannot run into each other: ("/a.x", "y") is not ("/a", "x.y").
    assert!(p.check(&r("/a.x", "y")).await.unwrap().allowed);
    assert!(p.check(&r("/a", "x.y")).await.unwrap().allowed);
    // Requests without the header share one key.
    assert!(p.check(&Request::new().route("/c")).await.unwrap().allowed);
    assert!(!p.check(&Request::new().route("/c")).await.unwrap().allowed);
}

#[tokio::test(start_paused = true)]
async fn hostile_keys_are_limited_like_any_other() {
    let p = policy(
        "[policies.p]\nkey = \"api_key\"\non_backend_error = \"fail_open\"\nwindows = [{ window = \"1m\", limit = 2 }]",
    )
    .await;
    let huge = "k".repeat(1 << 20);
    let odd = "\u{0}\u{ffff}é%*.. \r\n'\";--".repeat(100);
    for key in [huge.as_str(), odd.as_str(), "", "*"] {
        let req = Request::new().api_key(key);
        assert_eq!(admitted(&p, &req, 5).await, 2, "key of {} bytes", key.len());
        let d = p.check(&req).await.unwrap();
        assert!(!d.degraded);
    }
    // Two long keys differing in their last byte are two keys.
    let mut other = huge.clone();
    other.pop();
    other.push('j');
    assert_eq!(admitted(&p, &Request::new().api_key(other), 5).await, 2);
}

#[tokio::test(start_paused = true)]
async fn eval_consumes_nothing() {
    let p = policy("[policies.p]\nwindows = [{ window = \"1m\", limit = 1, action = \"block\", block_duration = \"1h\" }]").await;
    let a = ip("192.0.2.1");
    for _ in 0..3 {
        assert!(p.eval(&a).await.unwrap().allowed);
    }
    assert!(p.check(&a).await.unwrap().allowed);
    // A dry run of the refusal neither bans nor counts.
    assert!(!p.eval(&a).await.unwrap().allowed);
    assert_eq!(p.metrics().total_requests, 1);
    advance(61 * S).await;
    assert!(p.check(&a).await.unwrap().allowed);
}

#[tokio::test(start_paused = true)]
async fn headers_follow_the_draft_and_never_say_retry_earlier_than_t() {
    let p = policy(
        "[policies.p]\nwindows = [\n{ window = \"1s\", limit = 2, name = \"burst\" },\n{ window = \"1h\", limit = 5000, name = \"hourly\" },\n]",
    )
    .await;
    let a = ip("192.0.2.1");
    let first = p.check(&a).await.unwrap();
    assert_eq!(
        first.headers(),
        [
            (
                "RateLimit-Policy",
                "\"burst\";q=2;w=1, \"hourly\";q=5000;w=3600".to_string()
            ),
            (
                "RateLimit",
                "\"burst\";r=1;t=1, \"hourly\";r=4999;t=3600".to_string()
            ),
            ("X-RateLimit-Limit", "2".to_string()),
            ("X-RateLimit-Remaining", "1".to_string()),
            ("X-RateLimit-Reset", "1".to_string()),
        ]
    );
    advance(Duration::from_millis(300)).await;
    p.check(&a).await.unwrap();
    let refused = p.check(&a).await.unwrap();
    assert_eq!(refused.status(), Some(429));
    let h = refused.headers_in(HeaderStyle::Both);
    assert_eq!(h[0], ("Retry-After", "1".to_string()));
    assert_eq!(
        h[2],
        (
            "RateLimit",
            "\"burst\";r=0;t=1, \"hourly\";r=4998;t=3600".to_string()
        )
    );
    let body: serde_json::Value =
        serde_json::from_str(&refused.problem_details().unwrap()).unwrap();
    assert_eq!(
        body["type"],
        "https://iana.org/assignments/http-problem-types#quota-exceeded"
    );
    assert_eq!(body["violated-policies"], serde_json::json!(["burst"]));
    assert!(first.problem_details().is_none());
    // Retry-After never promises earlier than the refusing window's t.
    for w in &refused.windows {
        if !w.allowed {
            assert!(refused.retry_after.unwrap() >= w.retry_after);
        }
    }
    let none =
        policy("[policies.p]\nheaders = \"none\"\nwindows = [{ window = \"1s\", limit = 1 }]")
            .await;
    assert!(none.check(&a).await.unwrap().headers().is_empty());
    assert_eq!(
        none.check(&a).await.unwrap().headers(),
        [("Retry-After", "1".to_string())]
    );
}

#[tokio::test(start_paused = true)]
async fn metrics_after_a_scripted_sequence() {
    let p = policy(
        "[policies.p]\nexempt = [\"10.0.0.0/8\"]\ndeny = [\"203.0.113.1\"]\nwindows = [{ window = \"1m\", limit = 2 }, { window = \"1h\", limit = 3, action = \"block\", block_duration = \"1m\", name = \"hour\" }]",
    )
    .await;
    let a = ip("192.0.2.1");
    assert_eq!(admitted(&p, &a, 3).await, 2); // 2 allowed, 1 throttled
    assert!(p.check(&ip("10.0.0.1")).await.unwrap().allowed); // exempt
    assert!(!p.check(&ip("203.0.113.1")).await.unwrap().allowed); // denied
    advance(61 * S).await;
    assert_eq!(admitted(&p, &a, 2).await, 1); // 1 allowed, then the hour bans
    let m = p.metrics();
    assert_eq!(m.total_requests, 7);
    assert_eq!(m.allowed_requests, 4);
    assert_eq!(m.blocked_requests, 3);
    assert_eq!((m.throttled, m.blocked, m.denied, m.exempt), (1, 1, 1, 1));
    assert!((m.block_rate - 3.0 / 7.0).abs() < 1e-9);
    assert_eq!(
        (m.total_violations, m.bans_started, m.active_rules),
        (2, 1, 2)
    );
    assert_eq!(m.recent_violations.len(), 2);
    assert_eq!(m.recent_violations[1].window, "hour");
    assert_eq!(m.windows["1m"], (1, 0));
    assert_eq!(m.windows["hour"], (1, 0));
    // In-process checks are timed one in TIME_ONE_IN per thread, the first included.
    let timed = m.eval_histogram.iter().map(|b| b.1).sum::<u64>();
    assert!((1..=7).contains(&timed), "{timed} of 7 checks timed");
}

#[tokio::test(start_paused = true)]
async fn violations_reach_hooks_without_slowing_checks() {
    let p = policy("[policies.p]\nwindows = [{ window = \"1m\", limit = 1 }]").await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    p.on_violation(move |v| {
        let s = s.clone();
        async move { s.lock().unwrap().push(v) }
    });
    // A hook that never finishes stalls only the queue, which drops and counts.
    p.on_violation(|_| std::future::pending::<()>());
    let a = ip("192.0.2.1");
    p.check(&a).await.unwrap();
    for _ in 0..2000 {
        assert!(!p.check(&a).await.unwrap().allowed);
    }
    tokio::task::yield_now().await;
    let first = seen.lock().unwrap()[0].clone();
    assert_eq!(
        (
            first.policy.as_str(),
            first.window.as_str(),
            first.limit,
            first.count
        ),
        ("p", "1m", 1, 1)
    );
    assert_eq!(first.scope, "ip");
    assert_eq!(first.metadata["action"], "throttle");
    assert!(p.metrics().violations_dropped > 0);
}

#[tokio::test]
async fn configuration_errors_name_the_key_and_the_fix() {
    let err = |toml: &str| {
        let toml = toml.to_string();
        async move {
            Registry::from_toml_str(&toml)
                .await
                .unwrap_err()
                .to_string()
        }
    };
    let cases = [
        ("[policies.p]\nwindows = []", "policies.p.windows", "no windows"),
        ("[policies.p]\nwindows = [{ window = \"500ms\", limit = 1 }]", "policies.p.windows[0].window", "from 1s to 1d"),
        ("[policies.p]\nwindows = [{ window = \"2d\", limit = 1 }]", "policies.p.windows[0].window", "from 1s to 1d"),
        ("[policies.p]\nwindows = [{ window = \"1s\", limit = 0 }]", "policies.p.windows[0].limit", "from 1 to"),
        ("[policies.p]\nwindows = [{ window = \"1h\", limit = 100000 }]", "policies.p.windows[0].limit", "sliding_counter"),
        ("[policies.p]\nwindows = [{ window = \"1s\", limit = 1, block_duration = \"1m\" }]", "policies.p.windows[0].block_duration", "set action = \"block\""),
        ("[policies.p]\nwindows = [{ window = \"1s\", limit = 1, burst = 3 }]", "policies.p.windows[0].burst", "token_bucket"),
        ("[policies.p]\nwindows = [{ window = \"1s\", limit = 1 }, { window = \"1s\", limit = 2 }]", "policies.p.windows[1].name", "two windows are named"),
        ("[policies.p]\nwindows = [{ window = \"1s\", limit = 1, name = \"a\\\"b\" }]", "policies.p.windows[0].name", "without quotes"),
        ("[policies.p]\nkey = \"cookie\"\nwindows = [{ window = \"1s\", limit = 1 }]", "policies.p.key", "header:NAME"),
        ("[policies.p]\nexempt = [\"10.0.0.1/8\"]\nwindows = [{ window = \"1s\", limit = 1 }]", "policies.p.exempt", "did you mean 10.0.0.0/8"),
        ("[policies.p]\ncost = 5\nwindows = [{ window = \"1s\", limit = 2 }]", "policies.p.cost", "can never fit"),
        ("[policies.p]\nstore = \"nope\"\nwindows = [{ window = \"1s\", limit = 1 }]", "policies.p.store", "no store named `nope`"),
        ("[policies.p]\nwindow = \"1s\"\nwindows = [{ window = \"1s\", limit = 1 }]", "policies.p", "unknown field `window`"),
        ("[policies.p]\nwindows = [{ window = \"1s\", limit = 1, action = \"ban\" }]", "policies.p.windows", "unknown variant `ban`"),
        ("[policies.p]\nwindows = [{ window = \"1s\", limit = 1 }]\n[policies.p.tiers.pro]\nwindows = [{ window = \"x\", limit = 1 }]", "policies.p.tiers.pro.windows[0].window", "must be a number"),
    ];
    for (toml, at, says) in cases {
        let e = err(toml).await;
        assert!(e.contains(at) && e.contains(says), "{toml}\n=> {e}");
    }
    let e = ratesync::testing::registry("[limiters.x]\nrate_per_second = 1.0")
        .await
        .policy("nope")
        .unwrap_err();
    assert!(e.to_string().contains("no policy named `nope`"), "{e}");
}

#[tokio::test]
async fn reload_swaps_policies_for_every_handle_and_a_bad_file_changes_nothing() {
    let dir = std::env::temp_dir().join(format!("ratesync-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ratesync.toml");
    let write = |limit: &str| {
        std::fs::write(
            &path,
            format!("[policies.p]\nkey = \"user\"\nwindows = [{{ window = \"1h\", limit = {limit} }}]\n"),
        )
        .unwrap()
    };
    write("1");
    let reg = Registry::from_file(&path).await.unwrap();
    let p = reg.policy("p").unwrap();
    let hits = Arc::new(Mutex::new(0));
    let h = hits.clone();
    p.on_violation(move |_| {
        let h = h.clone();
        async move { *h.lock().unwrap() += 1 }
    });
    let u = Request::new().user("u");
    let first = p.check(&u).await.unwrap();
    assert_eq!((first.allowed, first.config_version), (true, 1));
    assert!(!p.check(&u).await.unwrap().allowed);
    // A bigger limit, seen by the handle taken before the reload; the hour's
    // count (1) and the counters stay.
    write("3");
    assert_eq!(reg.reload().await.unwrap(), 2);
    let d = p.check(&u).await.unwrap();
    assert_eq!(
        (d.allowed, d.config_version, d.remaining),
        (true, 2, Some(1))
    );
    assert_eq!(p.metrics().total_requests, 3);
    // A bad file keeps the rules in force, and is counted.
    std::fs::write(
        &path,
        "[policies.p]\nwindows = [{ window = \"1h\", limit = 0 }]\n",
    )
    .unwrap();
    let e = reg.reload().await.unwrap_err().to_string();
    assert!(e.contains("policies.p.windows[0].limit"), "{e}");
    assert_eq!((reg.reload_failures(), reg.config_version()), (1, 2));
    assert!(p.check(&u).await.unwrap().allowed);
    assert!(!p.check(&u).await.unwrap().allowed);
    tokio::task::yield_now().await;
    // The hook registered before the reload still hears of violations.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(*hits.lock().unwrap(), 2);
    // A policy removed from the file leaves the registry.
    std::fs::write(&path, "[limiters.x]\nrate_per_second = 1.0\n").unwrap();
    assert_eq!(reg.reload().await.unwrap(), 3);
    assert!(reg.policy("p").is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(start_paused = true)]
async fn lists_changed_at_run_time_hold_at_once_and_expire() {
    let p = policy("[policies.p]\nkey = \"api_key\"\nwindows = [{ window = \"1m\", limit = 100 }]")
        .await;
    use ratesync::policy::ListKind;
    let from = |k: &str, a: &str| Request::new().api_key(k).ip(a.parse().unwrap());
    assert!(p.check(&from("k", "203.0.113.7")).await.unwrap().allowed);
    assert!(p
        .list_add(ListKind::Deny, "203.0.113.0/24", Some(60 * S))
        .await
        .unwrap());
    assert!(p
        .list_add(ListKind::Exempt, "partner-key", None)
        .await
        .unwrap());
    let d = p.check(&from("k", "203.0.113.7")).await.unwrap();
    assert_eq!((d.allowed, d.action), (false, Action::Deny));
    assert_eq!(
        p.check(&from("partner-key", "198.51.100.1"))
            .await
            .unwrap()
            .action,
        Action::Exempt
    );
    let entries = p.list_entries(ListKind::Deny).await.unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(
        (entries[0].entry.as_str(), entries[0].left),
        ("203.0.113.0/24", Some(60 * S))
    );
    assert_eq!(
        (p.metrics().blacklisted_count, p.metrics().whitelisted_count),
        (1, 1)
    );
    // A bad entry names itself and what to write.
    let e = p
        .list_add(ListKind::Deny, "203.0.113.1/24", None)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("did you mean 203.0.113.0/24"), "{e}");
    assert!(p
        .list_add(ListKind::Deny, &"x".repeat(2000), None)
        .await
        .is_err());
    // The deny entry expires by itself; the copy follows within LIST_REFRESH.
    advance(61 * S).await;
    advance(ratesync::policy::LIST_REFRESH).await;
    tokio::task::yield_now().await;
    assert!(p.check(&from("k", "203.0.113.7")).await.unwrap().allowed);
    assert!(p
        .list_remove(ListKind::Exempt, "partner-key")
        .await
        .unwrap());
    assert_eq!(
        p.check(&from("partner-key", "198.51.100.1"))
            .await
            .unwrap()
            .action,
        Action::Allow
    );
}

// The decision itself, over one cell, as every Rust-side engine runs it.
use ratesync::policy::decide::{measure_and_replace, PolicyCell};
use ratesync::policy::WindowRule;

fn window_rules(windows: &str) -> Vec<WindowRule> {
    let c =
        ratesync::config::Config::from_toml_str(&format!("[policies.p]\nwindows = [{windows}]"))
            .unwrap_or_else(|e| panic!("{e}"));
    c.policies["p"].windows.clone()
}

const NS: u64 = 1_000_000_000;

/// A check still under the old rules after a reload raised a limit
/// (another thread, another host) must not shrink what the new rules
/// count: logs forget by time only.
#[test]
fn a_check_under_old_rules_keeps_what_new_rules_count() {
    let (old, new) = (
        window_rules("{ window = \"1h\", limit = 5 }"),
        window_rules("{ window = \"1h\", limit = 40 }"),
    );
    let mut cell = PolicyCell::default();
    let mut admitted = 0;
    for i in 0..100u64 {
        // Every third check is a straggler under the old rules.
        let r = if i % 3 == 0 { &old } else { &new };
        admitted += usize::from(measure_and_replace(r, &mut cell, NS + i, 1, false).counted);
    }
    assert_eq!(admitted, 40);
}

/// A reload that changes a window's algorithm or length gives it fresh
/// state; one that changes its limit, order or neighbours keeps it.
#[test]
fn windows_keep_their_state_by_algorithm_name_and_length() {
    let mut cell = PolicyCell::default();
    let a = window_rules("{ window = \"1h\", limit = 3, name = \"a\" }, { window = \"1h\", limit = 9, algorithm = \"fixed_window\", name = \"b\" }");
    for _ in 0..3 {
        assert!(measure_and_replace(&a, &mut cell, NS, 1, false).counted);
    }
    let reordered = window_rules("{ window = \"1h\", limit = 9, algorithm = \"fixed_window\", name = \"b\" }, { window = \"1m\", limit = 1, name = \"new\" }, { window = \"1h\", limit = 4, name = \"a\" }");
    let o = measure_and_replace(&reordered, &mut cell, NS, 1, false);
    assert!(o.counted);
    let left: Vec<u32> = o.windows.iter().map(|w| w.remaining).collect();
    assert_eq!(left, [5, 0, 0]);
    let other_algorithm = window_rules(
        "{ window = \"1h\", limit = 4, algorithm = \"sliding_counter\", name = \"a\" }",
    );
    let o = measure_and_replace(&other_algorithm, &mut cell, NS, 1, false);
    assert_eq!(o.windows[0].remaining, 3);
}

/// A store that fails mid-run: `fail_open` admits (marked degraded, counted,
/// nothing counted in the windows), `fail_closed` refuses with an error
/// naming the policy and the store; a stalled store delays only its own
/// checks; lists keep their last copy; all recover when the store does.
#[tokio::test(start_paused = true)]
async fn a_failing_store_follows_the_failure_mode_and_recovers() {
    use ratesync::policy::ListKind;
    use ratesync::testing::FaultyStore;
    let store = Arc::new(FaultyStore::memory());
    let reg = Registry::new();
    reg.add_store("memory", store.clone());
    reg.reload_from(
        ratesync::Config::from_toml_str(
            "[policies.open]\non_backend_error = \"fail_open\"\nwindows = [{ window = \"1m\", limit = 1 }]\n\
             [policies.closed]\nwindows = [{ window = \"1m\", limit = 1 }]\n",
        )
        .unwrap(),
    )
    .unwrap();
    let (open, closed) = (reg.policy("open").unwrap(), reg.policy("closed").unwrap());
    let a = ip("192.0.2.1");
    assert!(open
        .list_add(ListKind::Deny, "203.0.113.0/24", None)
        .await
        .unwrap());
    store.fail_policies(true);
    let d = open.check(&a).await.unwrap();
    assert!(d.allowed && d.degraded, "{d:?}");
    let e = closed.check(&a).await.unwrap_err().to_string();
    assert!(
        e.contains("policy `closed`") && e.contains("store `memory`") && e.contains("fail_closed"),
        "{e}"
    );
    assert!(open.block(&a, 60 * S, "test").await.is_err());
    // The list copy survives refreshes that fail.
    advance(3 * ratesync::policy::LIST_REFRESH).await;
    assert_eq!(
        open.check(&ip("203.0.113.5")).await.unwrap().action,
        Action::Deny
    );
    assert_eq!(
        (
            open.metrics().backend_errors >= 2,
            closed.metrics().backend_errors
        ),
        (true, 1)
    );
    // A slow store: the check waits for it, then decides.
    store.fail_policies(false);
    store.delay_reserve_answers(Duration::from_secs(2));
    let started = tokio::time::Instant::now();
    assert!(
        open.check(&a).await.unwrap().allowed,
        "the degraded admission counted nothing"
    );
    assert_eq!(started.elapsed(), Duration::from_secs(2));
    store.delay_reserve_answers(Duration::ZERO);
    assert!(!open.check(&a).await.unwrap().allowed);
    assert!(closed.check(&a).await.unwrap().allowed);
}
