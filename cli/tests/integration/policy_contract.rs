//! The policy contract: the same checks of `Engine::check_policy` and
//! `Engine::set_ban`, run against every engine that runs policies. On real
//! time against real services, so they compare the durations an engine
//! returns, never how long a call took.

use ratesync::engine::{Ctx, Engine, ListChange, PolicyCheck, PolicyOutcome};
use ratesync::metrics::Metrics;
use ratesync::policy::WindowRule;
use ratesync::StateKey;
use std::time::Duration;

const SLACK: Duration = Duration::from_millis(250);

/// The windows of `[policies.p]` with `windows = [...]`.
fn rules(windows: &str) -> Vec<WindowRule> {
    let c =
        ratesync::config::Config::from_toml_str(&format!("[policies.p]\nwindows = [{windows}]"))
            .expect("valid policy");
    c.policies["p"].windows.clone()
}

async fn check(
    e: &dyn Engine,
    key: &StateKey,
    rules: &[WindowRule],
    cost: u32,
    shadow: bool,
    commit: bool,
) -> PolicyOutcome {
    let metrics = Metrics::new();
    let ctx = Ctx {
        key,
        metrics: &metrics,
    };
    let check = PolicyCheck {
        rules,
        cost,
        shadow,
        commit,
    };
    e.check_policy(ctx, &check)
        .await
        .expect("engine answers a policy check")
}

fn room(o: &PolicyOutcome) -> Vec<(bool, u32)> {
    o.windows.iter().map(|w| (w.allowed, w.remaining)).collect()
}

/// Runs every check on `engine`, with keys under `scope`.
pub async fn run_all(name: &str, e: &dyn Engine, scope: &str) {
    if !e.runs_policies() {
        println!("{name}: runs no policies yet; policy contract skipped");
        return;
    }
    let base = StateKey::new(scope).child("policy");
    a_refused_request_takes_from_no_window(e, &base.child("all-or-nothing")).await;
    shadow_windows_count_but_never_refuse(e, &base.child("shadow")).await;
    block_windows_ban_and_bans_expire(e, &base.child("ban")).await;
    bans_set_by_hand_hold_and_lift(e, &base.child("manual")).await;
    counted_windows_refill(e, &base.child("counted")).await;
    costs_count_in_every_window(e, &base.child("cost")).await;
    lists_add_expire_and_remove(e, &base.child("list")).await;
    println!("{name}: policy contract holds");
}

async fn a_refused_request_takes_from_no_window(e: &dyn Engine, key: &StateKey) {
    let r = rules(
        "{ window = \"1h\", limit = 3 }, { window = \"1h\", limit = 5, algorithm = \"token_bucket\", name = \"tb\" }, { window = \"1h\", limit = 10, algorithm = \"sliding_counter\", action = \"monitor\", name = \"sc\" }",
    );
    for i in 0..3 {
        let o = check(e, key, &r, 1, false, true).await;
        assert!(o.counted && o.banned_for.is_none(), "request {i}: {o:?}");
    }
    for _ in 0..3 {
        let o = check(e, key, &r, 1, false, true).await;
        assert!(!o.counted, "{o:?}");
        assert_eq!(room(&o), [(false, 0), (true, 2), (true, 7)], "{o:?}");
        let retry = o.windows[0].retry_after;
        assert!(
            retry > Duration::from_secs(3590) && retry <= Duration::from_secs(3600),
            "{o:?}"
        );
    }
    // A dry run changes nothing either.
    let dry = check(e, key, &r, 1, false, false).await;
    assert_eq!(room(&dry), [(false, 0), (true, 2), (true, 7)], "{dry:?}");
}

async fn shadow_windows_count_but_never_refuse(e: &dyn Engine, key: &StateKey) {
    let r = rules(
        "{ window = \"1h\", limit = 1, algorithm = \"sliding_counter\", action = \"monitor\", name = \"m\" }, { window = \"1h\", limit = 5, name = \"real\" }",
    );
    let mut seen = Vec::new();
    for _ in 0..3 {
        let o = check(e, key, &r, 1, false, true).await;
        assert!(o.counted, "{o:?}");
        seen.push(room(&o));
    }
    assert_eq!(
        seen,
        [
            vec![(true, 0), (true, 4)],
            vec![(false, 0), (true, 3)],
            vec![(false, 0), (true, 2)]
        ]
    );
}

async fn block_windows_ban_and_bans_expire(e: &dyn Engine, key: &StateKey) {
    let r = rules("{ window = \"1h\", limit = 1, action = \"block\", block_duration = \"2s\" }");
    assert!(check(e, key, &r, 1, false, true).await.counted);
    // In shadow mode a full block window bans nobody.
    let shadow = check(e, key, &r, 1, true, true).await;
    assert!(
        !shadow.counted && !shadow.ban_started && shadow.banned_for.is_none(),
        "{shadow:?}"
    );
    let banning = check(e, key, &r, 1, false, true).await;
    assert!(!banning.counted && banning.ban_started, "{banning:?}");
    assert_eq!(banning.banned_for, Some(Duration::from_secs(2)));
    let banned = check(e, key, &r, 1, false, true).await;
    let left = banned.banned_for.expect("the ban holds");
    assert!(
        !banned.ban_started && banned.windows.is_empty() && left <= Duration::from_secs(2),
        "{banned:?}"
    );
    tokio::time::sleep(left + SLACK).await;
    // The ban ran out; the hour window is still full, so the key is banned again.
    let again = check(e, key, &r, 1, false, true).await;
    assert!(again.ban_started && !again.windows.is_empty(), "{again:?}");
}

async fn bans_set_by_hand_hold_and_lift(e: &dyn Engine, key: &StateKey) {
    let r = rules("{ window = \"1h\", limit = 100 }");
    let metrics = Metrics::new();
    let ctx = Ctx {
        key,
        metrics: &metrics,
    };
    assert!(!e.set_ban(ctx, Some(Duration::from_secs(30))).await.unwrap());
    // A shorter ban leaves the longer one.
    assert!(e.set_ban(ctx, Some(Duration::from_secs(1))).await.unwrap());
    let o = check(e, key, &r, 1, false, true).await;
    let left = o.banned_for.expect("banned");
    assert!(left > Duration::from_secs(29) && !o.counted, "{o:?}");
    assert!(e.set_ban(ctx, None).await.unwrap());
    assert!(check(e, key, &r, 1, false, true).await.counted);
}

async fn counted_windows_refill(e: &dyn Engine, key: &StateKey) {
    let r = rules("{ window = \"1s\", limit = 2, algorithm = \"fixed_window\" }");
    // Start just after a boundary, so the two checks share a window.
    let first = check(e, key, &r, 1, false, false).await;
    tokio::time::sleep(first.windows[0].reset_after).await;
    let mut counted = 0;
    let mut retry = Duration::ZERO;
    for _ in 0..4 {
        let o = check(e, key, &r, 1, false, true).await;
        counted += usize::from(o.counted);
        if !o.counted {
            retry = o.windows[0].retry_after;
        }
    }
    assert_eq!(counted, 2);
    assert!(
        retry > Duration::ZERO && retry <= Duration::from_secs(1),
        "{retry:?}"
    );
    tokio::time::sleep(retry + Duration::from_millis(20)).await;
    assert!(check(e, key, &r, 1, false, true).await.counted);
}

async fn costs_count_in_every_window(e: &dyn Engine, key: &StateKey) {
    let r = rules("{ window = \"1h\", limit = 5, algorithm = \"token_bucket\" }, { window = \"1h\", limit = 4, name = \"sw\" }");
    let o = check(e, key, &r, 3, false, true).await;
    assert!(o.counted);
    assert_eq!(room(&o), [(true, 2), (true, 1)]);
    let o = check(e, key, &r, 2, false, true).await;
    assert!(!o.counted, "{o:?}");
    assert_eq!(room(&o), [(true, 2), (false, 1)]);
    // A cost above every limit never fits.
    assert!(!check(e, key, &r, 6, false, true).await.counted);
}

async fn lists_add_expire_and_remove(e: &dyn Engine, key: &StateKey) {
    let metrics = Metrics::new();
    let ctx = Ctx {
        key,
        metrics: &metrics,
    };
    let add = |entry: &'static str, ttl: Option<Duration>| ListChange::Add { entry, ttl };
    assert!(e.list_change(ctx, add("10.0.0.0/8", None)).await.unwrap());
    assert!(
        !e.list_change(ctx, add("10.0.0.0/8", None)).await.unwrap(),
        "the same entry again changes nothing"
    );
    assert!(e
        .list_change(ctx, add("k-1", Some(Duration::from_millis(800))))
        .await
        .unwrap());
    let mut read = e.list_read(ctx).await.unwrap();
    read.sort_by(|a, b| a.entry.cmp(&b.entry));
    assert_eq!(read.len(), 2, "{read:?}");
    assert_eq!((read[0].entry.as_str(), read[0].left), ("10.0.0.0/8", None));
    let left = read[1].left.expect("k-1 expires");
    assert!(
        read[1].entry == "k-1" && left <= Duration::from_millis(800) && left > Duration::ZERO,
        "{read:?}"
    );
    tokio::time::sleep(Duration::from_millis(800) + SLACK).await;
    let read = e.list_read(ctx).await.unwrap();
    assert_eq!(read.len(), 1, "k-1 expired: {read:?}");
    assert!(e
        .list_change(
            ctx,
            ListChange::Remove {
                entry: "10.0.0.0/8"
            }
        )
        .await
        .unwrap());
    assert!(!e
        .list_change(
            ctx,
            ListChange::Remove {
                entry: "10.0.0.0/8"
            }
        )
        .await
        .unwrap());
    assert!(e.list_read(ctx).await.unwrap().is_empty());
}
