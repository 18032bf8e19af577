//! Limiter behaviour on the in-memory engine, mostly on paused tokio time so
//! that every wait is exact and nothing depends on the machine's speed.

use async_trait::async_trait;
use ratesync::config::{ConcurrencySpec, RateSpec};
use ratesync::engine::{
    BatchReservation, ConcurrencyState, Ctx, Engine, HolderId, LeaseOutcome, RateState,
    ReleaseSignal, Reservation,
};
use ratesync::{BackendError, Error, FailureMode, LimiterConfig, Registry};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

const MS: Duration = Duration::from_millis(1);

async fn registry(toml: &str) -> Registry {
    ratesync::testing::registry(toml).await
}

#[tokio::test(start_paused = true)]
async fn acquire_sleeps_until_its_reserved_slot() {
    let reg = registry("[limiters.api]\nrate_per_second = 10.0\nburst = 2").await;
    let api = reg.limiter("api").unwrap();
    let start = Instant::now();
    let mut waits = Vec::new();
    for _ in 0..4 {
        waits.push(api.acquire().await.unwrap().waited());
    }
    assert_eq!(waits, [Duration::ZERO, Duration::ZERO, 100 * MS, 100 * MS]);
    assert_eq!(start.elapsed(), 200 * MS);
}

/// The overshoot is the timer's lateness: a runtime blocked past the slot
/// shows up in it, and a permit that needed no wait has none.
#[tokio::test(flavor = "current_thread")]
async fn overshoot_measures_lateness_past_the_slot() {
    let reg = registry("[limiters.api]\nrate_per_second = 10.0\nburst = 1").await;
    let api = reg.limiter("api").unwrap();
    assert_eq!(api.acquire().await.unwrap().overshoot(), Duration::ZERO);
    let waiter = tokio::spawn({
        let api = api.clone();
        async move { api.acquire().await.unwrap() }
    });
    tokio::task::yield_now().await; // the waiter reserves its slot, ~100 ms away
    std::thread::sleep(300 * MS); // and this runtime cannot wake it in time
    let p = waiter.await.unwrap();
    assert!(p.overshoot() >= 150 * MS, "{:?}", p.overshoot());
    assert!(p.waited() >= p.overshoot());
}

#[tokio::test(start_paused = true)]
async fn concurrent_waiters_get_distinct_slots() {
    let reg = registry("[limiters.api]\nrate_per_second = 100.0").await;
    let api = reg.limiter("api").unwrap();
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let api = api.clone();
            tokio::spawn(async move { api.acquire().await.unwrap().waited() })
        })
        .collect();
    let mut waits = Vec::new();
    for t in tasks {
        waits.push(t.await.unwrap());
    }
    waits.sort();
    let expected: Vec<Duration> = (0..10).map(|i| i * 10 * MS).collect();
    assert_eq!(waits, expected);
}

#[tokio::test(start_paused = true)]
async fn timeout_fails_at_once_and_reserves_nothing() {
    let reg = registry("[limiters.api]\nrate_per_second = 1.0").await;
    let api = reg.limiter("api").unwrap();
    let _first = api.acquire().await.unwrap();
    let start = Instant::now();
    let err = api.acquire_timeout(500 * MS).await.unwrap_err();
    assert_eq!(
        start.elapsed(),
        Duration::ZERO,
        "must fail without sleeping"
    );
    match &err {
        Error::Timeout {
            limiter,
            timeout,
            retry_after,
            reason,
        } => {
            assert_eq!(limiter, "api");
            assert_eq!(*timeout, 500 * MS);
            assert_eq!(*retry_after, Some(Duration::from_secs(1)));
            assert_eq!(*reason, "rate");
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert_eq!(
        err.to_string(),
        "limiter `api`: no permit within 500 ms; the earliest is 1.000 s away (rate)"
    );
    // The refused call took nothing: the next slot is still 1 s away, not 2.
    let p = api.acquire_timeout(Duration::from_secs(2)).await.unwrap();
    assert_eq!(p.waited(), Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn configured_timeout_bounds_acquire() {
    let reg = registry("[limiters.api]\nrate_per_second = 2.0\ntimeout = 0.75").await;
    let api = reg.limiter("api").unwrap();
    assert_eq!(api.acquire().await.unwrap().waited(), Duration::ZERO);
    // Another task reserves the slot 500 ms away ...
    let queued = {
        let api = api.clone();
        tokio::spawn(async move { api.acquire().await.unwrap().waited() })
    };
    tokio::task::yield_now().await;
    // ... so the next is 1 s away, beyond the configured 0.75 s.
    let start = Instant::now();
    let e = api.acquire().await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert!(e.is_timeout());
    assert_eq!(e.retry_after(), Some(Duration::from_secs(1)));
    assert_eq!(queued.await.unwrap(), 500 * MS);
}

#[tokio::test(start_paused = true)]
async fn try_acquire_never_waits() {
    let reg = registry("[limiters.api]\nrate_per_second = 1.0\nburst = 3").await;
    let api = reg.limiter("api").unwrap();
    let start = Instant::now();
    for _ in 0..3 {
        assert!(api.try_acquire().await.unwrap().is_some());
    }
    assert!(api.try_acquire().await.unwrap().is_none());
    assert_eq!(start.elapsed(), Duration::ZERO);
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(api.try_acquire().await.unwrap().is_some());
    assert!(api.try_acquire().await.unwrap().is_none());
    assert_eq!(api.metrics().timeouts, 2);
}

/// A rate-only in-process `try_acquire` is decided without awaiting and
/// counted from the engine's one clock reading: the same metrics as the
/// general path, and a slot time and last grant on the wall clock.
#[tokio::test]
async fn instant_grants_are_counted_like_any_other() {
    let reg = registry("[limiters.api]\nrate_per_second = 1.0\nburst = 2").await;
    let api = reg.limiter("api").unwrap();
    let wall_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as f64
    };
    let before = wall_ms();
    let first = api.try_acquire().await.unwrap().expect("a token");
    let second = api
        .key("other")
        .try_acquire_n(2)
        .await
        .unwrap()
        .expect("two tokens");
    assert!(api.try_acquire().await.unwrap().is_some());
    assert!(api.try_acquire().await.unwrap().is_none());
    let after = wall_ms();
    for p in [&first, &second] {
        assert_eq!(
            (p.limiter(), p.waited(), p.holds_slot()),
            ("api", Duration::ZERO, false)
        );
        let slot_ms = p.slot_unix_us().expect("the memory engine reports slots") as f64 / 1000.0;
        assert!(
            slot_ms >= before - 5.0 && slot_ms <= after + 5.0,
            "{before} <= {slot_ms} <= {after}"
        );
    }
    let m = api.metrics();
    assert_eq!(
        (m.total_acquisitions, m.timeouts, m.total_wait_time_ms),
        (3, 1, 0.0)
    );
    assert_eq!(m.wait_histogram.iter().find(|b| b.0 == 0.0).unwrap().1, 3);
    let last_ms = m.last_acquisition_at.unwrap() * 1000.0;
    assert!(
        last_ms >= before - 5.0 && last_ms <= after + 5.0,
        "{before} <= {last_ms} <= {after}"
    );
}

#[tokio::test(start_paused = true)]
async fn sliding_window_is_exact() {
    let reg =
        registry("[limiters.login]\nalgorithm = \"sliding_window\"\nlimit = 3\nwindow_seconds = 1")
            .await;
    let login = reg.limiter("login").unwrap();
    for _ in 0..3 {
        assert!(login.try_acquire().await.unwrap().is_some());
        tokio::time::advance(100 * MS).await;
    }
    assert!(login.try_acquire().await.unwrap().is_none());
    // The first grant leaves the window 1 s after it was made: 700 ms from now.
    assert_eq!(login.acquire().await.unwrap().waited(), 700 * MS);
    assert_eq!(login.acquire().await.unwrap().waited(), 100 * MS);
}

#[tokio::test(start_paused = true)]
async fn per_key_limiters_have_their_own_state_and_share_metrics() {
    let reg = registry("[limiters.per_user]\nrate_per_second = 1.0").await;
    let lim = reg.limiter("per_user").unwrap();
    let (a, b) = (lim.key("alice"), lim.key("bob"));
    assert!(a.try_acquire().await.unwrap().is_some());
    assert!(b.try_acquire().await.unwrap().is_some());
    assert!(a.try_acquire().await.unwrap().is_none());
    // Odd keys work and do not collide with each other or with nesting.
    for k in ["user 42", "*", "a.b", "é☃", "{x}:y", &"k".repeat(1024)] {
        assert!(lim.key(k).try_acquire().await.unwrap().is_some(), "{k}");
    }
    assert!(lim.key("a").key("b").try_acquire().await.unwrap().is_some());
    let m = lim.metrics();
    assert_eq!((m.total_acquisitions, m.timeouts), (9, 1));
    assert_eq!(reg.metrics()["per_user"], m);
}

#[tokio::test(start_paused = true)]
async fn concurrency_cap_holds_for_200_tasks() {
    let reg = registry("[limiters.jobs]\nmax_concurrent = 5").await;
    let jobs = reg.limiter("jobs").unwrap();
    let inside = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let (jobs, inside, peak) = (jobs.clone(), inside.clone(), peak.clone());
            tokio::spawn(async move {
                let permit = jobs.acquire().await.unwrap();
                assert!(permit.holds_slot());
                let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(1 + i % 7)).await;
                inside.fetch_sub(1, Ordering::SeqCst);
                if i % 2 == 0 {
                    permit.release().await.unwrap();
                } else {
                    drop(permit);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(peak.load(Ordering::SeqCst), 5);
    let m = jobs.metrics();
    assert_eq!(m.total_acquisitions, 200);
    assert_eq!(m.total_releases, 200);
    assert_eq!(m.current_concurrent, 0);
    assert!(
        m.max_concurrent_reached >= 195,
        "{}",
        m.max_concurrent_reached
    );
    let st = jobs.state().await.unwrap().concurrency.unwrap();
    assert_eq!((st.holders, st.max), (0, 5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_cap_holds_on_real_threads() {
    let reg = registry("[limiters.jobs]\nmax_concurrent = 5").await;
    let jobs = reg.limiter("jobs").unwrap();
    let inside = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let (jobs, inside, peak) = (jobs.clone(), inside.clone(), peak.clone());
            tokio::spawn(async move {
                let _permit = jobs.acquire().await.unwrap();
                let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                tokio::task::yield_now().await;
                inside.fetch_sub(1, Ordering::SeqCst);
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert!(peak.load(Ordering::SeqCst) <= 5);
    assert_eq!(jobs.metrics().total_acquisitions, 200);
}

/// A task that releases and asks again at once queues behind the tasks
/// already waiting: four tasks sharing one slot take turns.
#[tokio::test(start_paused = true)]
async fn concurrency_waiters_are_served_in_arrival_order() {
    let reg = registry("[limiters.one]\nmax_concurrent = 1").await;
    let one = reg.limiter("one").unwrap();
    let order = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let tasks: Vec<_> = (0..4)
        .map(|i| {
            let (one, order) = (one.clone(), order.clone());
            tokio::spawn(async move {
                for _ in 0..25 {
                    let p = one.acquire().await.unwrap();
                    order.lock().unwrap().push(i);
                    tokio::time::sleep(10 * MS).await;
                    drop(p);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let order = order.lock().unwrap();
    assert_eq!(order.len(), 100);
    // Round robin: no task is granted twice before each other task once.
    for w in order.windows(4) {
        let mut seen = w.to_vec();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 4, "unfair order: {:?}", &order[..]);
    }
}

#[tokio::test(start_paused = true)]
async fn waiters_wake_on_release_not_on_a_poll() {
    let reg = registry("[limiters.jobs]\nmax_concurrent = 1").await;
    let jobs = reg.limiter("jobs").unwrap();
    let held = jobs.acquire().await.unwrap();
    let waiter = {
        let jobs = jobs.clone();
        tokio::spawn(async move { jobs.acquire().await.unwrap().waited() })
    };
    tokio::time::sleep(137 * MS).await;
    drop(held);
    assert_eq!(waiter.await.unwrap(), 137 * MS);
}

#[tokio::test(start_paused = true)]
async fn concurrency_timeout_and_try() {
    let reg = registry("[limiters.jobs]\nmax_concurrent = 2\nlease_seconds = 10").await;
    let jobs = reg.limiter("jobs").unwrap();
    let _a = jobs.acquire().await.unwrap();
    let _b = jobs.try_acquire().await.unwrap().unwrap();
    assert!(jobs.try_acquire().await.unwrap().is_none());
    let start = Instant::now();
    let e = jobs.acquire_timeout(300 * MS).await.unwrap_err();
    assert_eq!(start.elapsed(), 300 * MS);
    assert!(matches!(
        e,
        Error::Timeout {
            reason: "concurrency",
            ..
        }
    ));
    let m = jobs.metrics();
    assert_eq!(
        (m.timeouts, m.max_concurrent_reached, m.current_concurrent),
        (2, 2, 2)
    );
}

#[tokio::test(start_paused = true)]
async fn permits_are_renewed_while_held() {
    let reg = registry("[limiters.jobs]\nmax_concurrent = 1\nlease_seconds = 3").await;
    let jobs = reg.limiter("jobs").unwrap();
    let held = jobs.acquire().await.unwrap();
    // Ten leases long: the background renewal keeps the slot.
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(jobs.try_acquire().await.unwrap().is_none());
    drop(held);
    assert!(jobs.try_acquire().await.unwrap().is_some());
}

#[tokio::test(start_paused = true)]
async fn a_forgotten_permit_loses_its_slot_after_the_lease() {
    let reg = registry("[limiters.jobs]\nmax_concurrent = 1\nlease_seconds = 3").await;
    let jobs = reg.limiter("jobs").unwrap();
    // Simulate a holder that vanished: no renewal, no release.
    let holder = HolderId::new();
    let spec = jobs.spec().concurrency.unwrap();
    let engine = reg.store("memory").unwrap();
    let metrics = ratesync::metrics::Metrics::new();
    let ctx = Ctx {
        key: jobs.state_key(),
        metrics: &metrics,
    };
    assert!(matches!(
        engine.acquire_lease(ctx, &holder, &spec).await.unwrap(),
        LeaseOutcome::Acquired { .. }
    ));
    assert!(jobs.try_acquire().await.unwrap().is_none());
    // A waiter gets the slot exactly when the lease runs out.
    assert_eq!(
        jobs.acquire().await.unwrap().waited(),
        Duration::from_secs(3)
    );
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_acquire_holds_no_slot() {
    // Cancelled while queueing for a slot.
    let reg = registry("[limiters.jobs]\nmax_concurrent = 1").await;
    let jobs = reg.limiter("jobs").unwrap();
    let held = jobs.acquire().await.unwrap();
    let cancelled = tokio::time::timeout(50 * MS, jobs.acquire()).await;
    assert!(cancelled.is_err());
    drop(held);
    assert!(jobs.try_acquire().await.unwrap().is_some());
    assert_eq!(jobs.metrics().current_concurrent, 0);

    // Cancelled while sleeping for its rate slot, holding a concurrency slot.
    let reg = registry("[limiters.dual]\nrate_per_second = 1.0\nmax_concurrent = 1").await;
    let dual = reg.limiter("dual").unwrap();
    drop(dual.acquire().await.unwrap());
    let cancelled = tokio::time::timeout(100 * MS, dual.acquire()).await;
    assert!(cancelled.is_err());
    let st = dual.state().await.unwrap();
    assert_eq!(st.concurrency.unwrap().holders, 0);
    assert_eq!(dual.metrics().current_concurrent, 0);
}

#[tokio::test(start_paused = true)]
async fn dual_limits_apply_both() {
    let reg =
        registry("[limiters.dual]\nrate_per_second = 10.0\nburst = 5\nmax_concurrent = 2").await;
    let dual = reg.limiter("dual").unwrap();
    let a = dual.acquire().await.unwrap();
    let _b = dual.acquire().await.unwrap();
    // Tokens remain but both slots are taken.
    assert!(dual.try_acquire().await.unwrap().is_none());
    drop(a);
    let _c = dual.acquire().await.unwrap();
    match dual.state().await.unwrap().rate.unwrap() {
        RateState::TokenBucket {
            remaining, burst, ..
        } => assert_eq!((remaining, burst), (2, 5)),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_slot_returned_because_the_rate_refused_is_not_a_release() {
    let reg =
        registry("[limiters.dual]\nrate_per_second = 1.0\nburst = 1\nmax_concurrent = 4").await;
    let dual = reg.limiter("dual").unwrap();
    drop(dual.acquire().await.unwrap());
    // A slot is free but the bucket is empty: the slot is taken, then given back.
    assert!(dual.try_acquire().await.unwrap().is_none());
    tokio::task::yield_now().await;
    let m = dual.metrics();
    assert_eq!(
        (
            m.total_acquisitions,
            m.total_releases,
            m.current_concurrent,
            m.timeouts
        ),
        (1, 1, 0, 1)
    );
}

#[tokio::test(start_paused = true)]
async fn metrics_after_a_scripted_sequence() {
    let reg =
        registry("[limiters.api]\nrate_per_second = 10.0\nburst = 2\nmax_concurrent = 3").await;
    let api = reg.limiter("api").unwrap();
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(api.acquire().await.unwrap()); // waits 0, 0, 100 ms
    }
    assert!(api.try_acquire().await.unwrap().is_none()); // cap hit: timeout 1, cap 1
    drop(held.pop());
    held.pop().unwrap().release().await.unwrap();
    // The next token is at 200 ms: waits 100 ms.
    let p = api.acquire().await.unwrap();
    // A slot is free but the token is 100 ms away: timeout 2; the slot it
    // took is given back unused, which is not a permit's release.
    assert!(api.acquire_timeout(50 * MS).await.is_err());
    drop(p);
    let m = api.metrics();
    assert_eq!(m.total_acquisitions, 4);
    assert_eq!(m.total_wait_time_ms, 200.0);
    assert_eq!(m.avg_wait_time_ms, 50.0);
    assert_eq!(m.max_wait_time_ms, 100.0);
    assert_eq!(m.timeouts, 2);
    assert_eq!(m.max_concurrent_reached, 1);
    assert_eq!(m.total_releases, 3);
    assert_eq!(m.current_concurrent, 1);
    assert_eq!(m.backend_errors, 0);
    assert_eq!(m.cas_failures, 0);
    let bucket = |ms: f64| m.wait_histogram.iter().find(|b| b.0 == ms).unwrap().1;
    assert_eq!((bucket(0.0), bucket(100.0)), (2, 2));
    assert!(m.last_acquisition_at.unwrap() > 1.7e9);
}

#[tokio::test(start_paused = true)]
async fn state_reads_without_consuming() {
    let reg = registry(
        "[limiters.api]\nrate_per_second = 1.0\nburst = 3\n[limiters.win]\nalgorithm = \"sliding_window\"\nlimit = 2\nwindow_seconds = 10",
    )
    .await;
    let api = reg.limiter("api").unwrap();
    let _p = api.acquire().await.unwrap();
    for _ in 0..3 {
        match api.state().await.unwrap().rate.unwrap() {
            RateState::TokenBucket {
                remaining,
                reset_after,
                retry_after,
                ..
            } => {
                assert_eq!(
                    (remaining, reset_after, retry_after),
                    (2, Duration::from_secs(1), Duration::ZERO)
                );
            }
            other => panic!("{other:?}"),
        }
    }
    let win = reg.limiter("win").unwrap().key("ip");
    let _w = win.acquire().await.unwrap();
    tokio::time::advance(Duration::from_secs(4)).await;
    let _w = win.acquire().await.unwrap();
    match win.state().await.unwrap().rate.unwrap() {
        RateState::SlidingWindow {
            count,
            limit,
            remaining,
            reset_after,
            retry_after,
        } => {
            assert_eq!((count, limit, remaining), (2, 2, 0));
            assert_eq!(reset_after, Duration::from_secs(10));
            assert_eq!(retry_after, Duration::from_secs(6));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn check_all_takes_from_all_or_none() {
    let reg = registry(
        "[limiters.ip]\nrate_per_second = 1.0\nburst = 5\n[limiters.user]\nrate_per_second = 1.0\nburst = 2\n[limiters.slots]\nmax_concurrent = 1",
    )
    .await;
    let ip = reg.limiter("ip").unwrap().key("10.0.0.1");
    let user = reg.limiter("user").unwrap().key("42");
    let slots = reg.limiter("slots").unwrap();
    let first = ratesync::check_all(&[&ip, &user, &slots])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.len(), 3);
    assert!(first[2].holds_slot());
    // The slot is held: nothing is taken from ip or user.
    assert!(ratesync::check_all(&[&ip, &user, &slots])
        .await
        .unwrap()
        .is_none());
    drop(first);
    assert!(ratesync::check_all(&[&ip, &user, &slots])
        .await
        .unwrap()
        .is_some());
    // user is now empty: ip keeps its tokens and the slot is given back.
    assert!(ratesync::check_all(&[&ip, &user, &slots])
        .await
        .unwrap()
        .is_none());
    match ip.state().await.unwrap().rate.unwrap() {
        RateState::TokenBucket { remaining, .. } => assert_eq!(remaining, 3),
        other => panic!("{other:?}"),
    }
    assert_eq!(slots.state().await.unwrap().concurrency.unwrap().holders, 0);
    assert_eq!(reg.limiter("user").unwrap().metrics().timeouts, 1);
    assert_eq!(reg.limiter("slots").unwrap().metrics().timeouts, 1);
    let e = ratesync::check_all(&[&ip, &ip]).await.unwrap_err();
    assert!(e.to_string().contains("twice"), "{e}");
}

#[tokio::test]
async fn check_all_across_stores_is_refused_with_advice() {
    let reg = registry("[stores.other]\nengine = \"memory\"\n[limiters.a]\nrate_per_second = 1.0\n[limiters.b]\nstore = \"other\"\nrate_per_second = 1.0").await;
    let (a, b) = (reg.limiter("a").unwrap(), reg.limiter("b").unwrap());
    let e = ratesync::check_all(&[&a, &b]).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "check_all decides rate limits atomically in one store, but `a` uses store `memory` and `b` uses store `other`; put them in one store or call them one by one"
    );
}

#[tokio::test]
async fn unknown_limiters_list_the_known_ones() {
    let reg =
        registry("[limiters.api]\nrate_per_second = 1.0\n[limiters.login]\nmax_concurrent = 1")
            .await;
    assert_eq!(
        reg.limiter("nope").unwrap_err().to_string(),
        "no limiter named `nope`; known limiters: api, login"
    );
    assert_eq!(reg.names(), ["api", "login"]);
}

#[tokio::test]
async fn programmatic_registration_is_validated() {
    let reg = Registry::new();
    let e = reg
        .register("bad", LimiterConfig::token_bucket(0.0, 1))
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "<registered>: limiters.bad.rate_per_second: must be a positive number, got 0"
    );
    let e = reg
        .register(
            "lost",
            LimiterConfig::token_bucket(1.0, 1).with_store("redis"),
        )
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "<registered>: limiters.lost.store: no store named `redis`; define [stores.redis] or use one of: memory"
    );
    reg.register(
        "ok",
        LimiterConfig::sliding_window(2, Duration::from_secs(1)),
    )
    .unwrap();
    let e = reg
        .register("ok", LimiterConfig::concurrency(1))
        .unwrap_err();
    assert!(e.to_string().contains("already exists"), "{e}");
}

/// An engine whose backend is down, to drive the failure modes.
#[derive(Debug)]
struct DownEngine;

fn down() -> BackendError {
    BackendError::new("down", "connection refused")
}

#[async_trait]
impl Engine for DownEngine {
    fn kind(&self) -> &'static str {
        "down"
    }
    async fn reserve_n(
        &self,
        _: Ctx<'_>,
        _: &RateSpec,
        _: u32,
        _: Duration,
    ) -> Result<Reservation, BackendError> {
        Err(down())
    }
    async fn reserve_all(
        &self,
        _: &[(Ctx<'_>, RateSpec)],
        _: Duration,
    ) -> Result<BatchReservation, BackendError> {
        Err(down())
    }
    async fn rate_state(&self, _: Ctx<'_>, _: &RateSpec) -> Result<RateState, BackendError> {
        Err(down())
    }
    async fn acquire_lease(
        &self,
        _: Ctx<'_>,
        _: &HolderId,
        _: &ConcurrencySpec,
    ) -> Result<LeaseOutcome, BackendError> {
        Err(down())
    }
    async fn renew_lease(
        &self,
        _: Ctx<'_>,
        _: &HolderId,
        _: Duration,
    ) -> Result<bool, BackendError> {
        Err(down())
    }
    async fn release_lease(&self, _: Ctx<'_>, _: &HolderId) -> Result<bool, BackendError> {
        Err(down())
    }
    async fn lease_state(
        &self,
        _: Ctx<'_>,
        _: &ConcurrencySpec,
    ) -> Result<ConcurrencyState, BackendError> {
        Err(down())
    }
    async fn subscribe_releases(&self, _: Ctx<'_>) -> Result<ReleaseSignal, BackendError> {
        Err(down())
    }
}

#[tokio::test]
async fn backend_outages_follow_the_failure_mode() {
    let reg = Registry::new();
    reg.add_store("down", Arc::new(DownEngine));
    let closed = reg
        .register(
            "closed",
            LimiterConfig::token_bucket(1.0, 1)
                .with_max_concurrent(1)
                .with_store("down"),
        )
        .unwrap();
    let open = reg
        .register(
            "open",
            LimiterConfig::token_bucket(1.0, 1)
                .with_max_concurrent(1)
                .with_store("down")
                .with_failure_mode(FailureMode::FailOpen),
        )
        .unwrap();

    let e = closed.acquire().await.unwrap_err();
    assert!(matches!(e, Error::Backend { .. }));
    assert_eq!(
        e.to_string(),
        "limiter `closed`: store `down` failed: down: connection refused; the limiter is fail_closed, so the request was denied (set on_backend_error = \"fail_open\" to admit during outages)"
    );
    assert!(closed.try_acquire().await.is_err());
    assert_eq!(closed.metrics().backend_errors, 2);
    assert_eq!(closed.metrics().total_acquisitions, 0);

    for _ in 0..3 {
        let p = open.acquire().await.unwrap();
        assert!(!p.holds_slot());
    }
    let m = open.metrics();
    // Each acquire met the outage twice: once for the slot, once for the rate.
    assert_eq!((m.total_acquisitions, m.backend_errors), (3, 6));
    assert!(open.state().await.is_err());
}

#[tokio::test]
async fn default_registry_serves_the_zero_setup_path() {
    let reg = registry("[limiters.script]\nrate_per_second = 1000.0\nburst = 10").await;
    ratesync::set_default_registry(reg).unwrap();
    let _p = ratesync::acquire("script").await.unwrap();
    assert!(ratesync::try_acquire("script").await.unwrap().is_some());
    assert!(matches!(
        ratesync::acquire("other").await,
        Err(Error::UnknownLimiter { .. })
    ));
    assert!(ratesync::set_default_registry(Registry::new()).is_err());
}

#[test]
fn hashed_keys_hide_the_value() {
    let k = ratesync::hash_key("alice@example.com");
    assert_eq!(k.len(), 32);
    assert!(!k.contains("alice"));
    assert_ne!(k, ratesync::hash_key("bob@example.com"));
    assert_ne!(
        ratesync::hash_key_with_secret(b"a", "alice@example.com"),
        ratesync::hash_key_with_secret(b"b", "alice@example.com")
    );
}

/// A permit learns that its lease is gone: when a renewal finds it lost at
/// once, and when renewals fail or go unanswered, once the lease has run out
/// (not before). Each loss is counted once in `leases_lost`.
#[tokio::test(start_paused = true)]
async fn a_permit_knows_when_its_lease_is_lost() {
    use ratesync::testing::{FaultyStore, Renewals};
    for (mode, lost_after) in [
        (Renewals::Lost, Duration::from_secs(1)),
        (Renewals::Fail, Duration::from_secs(3)),
        (Renewals::Hang, Duration::from_secs(3)),
    ] {
        let engine = Arc::new(FaultyStore::memory());
        let reg = Registry::new();
        reg.add_store("r", engine.clone());
        let jobs = reg
            .register(
                "jobs",
                LimiterConfig::concurrency(1)
                    .with_lease(Duration::from_secs(3))
                    .with_store("r"),
            )
            .unwrap();
        let permit = jobs.acquire().await.unwrap();
        assert!(permit.is_held());
        // Renewed while the store answers: still held after several leases.
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(
            permit.is_held(),
            "{mode:?}: a renewed lease was reported lost"
        );
        engine.set_renewals(mode);
        let broke = Instant::now();
        tokio::time::timeout(Duration::from_secs(20), permit.lost())
            .await
            .unwrap_or_else(|_| panic!("{mode:?}: the loss was never told"));
        let after = broke.elapsed();
        assert!(!permit.is_held());
        assert_eq!(jobs.metrics().leases_lost, 1, "{mode:?}");
        // Told no later than the lease allows, and (for failures that prove
        // nothing) no earlier than the last certain expiry.
        assert!(after <= lost_after, "{mode:?}: told after {after:?}");
        if mode != Renewals::Lost {
            assert!(
                after >= Duration::from_secs(2),
                "{mode:?}: told after {after:?}, before the lease could have run out"
            );
        }
        drop(permit);
    }
}

/// A permit without a concurrency slot has nothing to lose.
#[tokio::test(start_paused = true)]
async fn a_rate_permit_is_always_held() {
    let reg = registry("[limiters.api]\nrate_per_second = 10.0").await;
    let p = reg.limiter("api").unwrap().acquire().await.unwrap();
    assert!(p.is_held());
    assert!(tokio::time::timeout(Duration::from_secs(60), p.lost())
        .await
        .is_err());
}

/// The README's default thresholds, each at its boundary: a mean wait of
/// 1000 ms warns, 9 compare-and-set conflicts in a 5 s interval (108 a
/// minute) warn and 8 (96) do not, 9 of 10 slots held warns and 8 do not, one
/// store failure is critical.
#[tokio::test(start_paused = true)]
async fn alerts_fire_at_their_default_thresholds() {
    use ratesync::alert::{AlertConfig, AlertKind, AlertLoop, Severity};
    let reg = Registry::new();
    reg.add_store("down", Arc::new(DownEngine));
    for n in [8, 9] {
        let store = ratesync::testing::FaultyStore::memory();
        store.report_cas_failures(n);
        reg.add_store(format!("cas{n}"), Arc::new(store));
        reg.register(
            &format!("cas{n}"),
            LimiterConfig::token_bucket(1000.0, 10).with_store(format!("cas{n}")),
        )
        .unwrap();
    }
    let slow = reg
        .register("slow", LimiterConfig::token_bucket(0.5, 1))
        .unwrap();
    let busy9 = reg
        .register("busy9", LimiterConfig::concurrency(10))
        .unwrap();
    let busy8 = reg
        .register("busy8", LimiterConfig::concurrency(10))
        .unwrap();
    let down = reg
        .register(
            "down",
            LimiterConfig::token_bucket(1.0, 1)
                .with_store("down")
                .with_failure_mode(FailureMode::FailOpen),
        )
        .unwrap();
    for n in [8, 9] {
        drop(
            reg.limiter(&format!("cas{n}"))
                .unwrap()
                .try_acquire()
                .await
                .unwrap(),
        );
    }
    drop(slow.acquire().await.unwrap()); // no wait
    drop(slow.acquire().await.unwrap()); // 2 s: a mean of 1000 ms
    let mut held = Vec::new();
    for _ in 0..9 {
        held.push(busy9.acquire().await.unwrap());
    }
    for _ in 0..8 {
        held.push(busy8.acquire().await.unwrap());
    }
    drop(down.try_acquire().await.unwrap());
    let mut alerts = AlertLoop::new(reg.clone(), AlertConfig::default()).unwrap();
    let report = alerts.tick().await;
    let fired = |limiter: &str, kind: AlertKind| {
        report
            .sent
            .iter()
            .find(|a| a.limiter == limiter && a.alert == kind)
            .map(|a| (a.severity, a.value, a.threshold))
    };
    assert_eq!(
        fired("slow", AlertKind::AvgWaitMs),
        Some((Severity::Warning, 1000.0, 1000.0))
    );
    let (sev, per_minute, th) = fired("cas9", AlertKind::CasFailures).expect("cas9 warns");
    assert_eq!((sev, th), (Severity::Warning, 100.0));
    assert!((per_minute - 108.0).abs() < 1e-9, "{per_minute}");
    assert_eq!(
        fired("cas8", AlertKind::CasFailures),
        None,
        "96 a minute is under 100"
    );
    assert_eq!(
        fired("busy9", AlertKind::Concurrency),
        Some((Severity::Warning, 0.9, 0.9))
    );
    assert_eq!(
        fired("busy8", AlertKind::Concurrency),
        None,
        "0.8 is under 0.9"
    );
    assert_eq!(
        fired("down", AlertKind::BackendErrors).map(|f| f.0),
        Some(Severity::Critical)
    );
    drop(held);
}

/// The README: "the GCRA emission interval is rounded *up*", so rounding
/// can only admit less; and the scripts' whole microseconds round up too.
#[test]
fn emission_intervals_round_up() {
    let g = ratesync::gcra::Gcra::new(3.0, 1).unwrap();
    assert_eq!(
        g.emission_ns(),
        333_333_334,
        "1/3 s rounds up to the next ns"
    );
    let g = ratesync::gcra::Gcra::new(7_000.0, 1).unwrap();
    assert_eq!(g.emission_ns(), 142_858);
    match ratesync::engine::script_args(&RateSpec::TokenBucket(g)) {
        (1, us, 1) => assert_eq!(us, 143, "142.858 us rounds up to 143 us"),
        other => panic!("{other:?}"),
    }
}

/// The README: `try_acquire` never waits, so it refuses while others queue
/// for the key, even at the moment a slot is freed for the head waiter.
#[tokio::test(start_paused = true)]
async fn try_acquire_refuses_while_others_queue() {
    let reg = registry("[limiters.one]\nmax_concurrent = 1").await;
    let one = reg.limiter("one").unwrap();
    let held = one.acquire().await.unwrap();
    let waiter = {
        let one = one.clone();
        tokio::spawn(async move { one.acquire().await.unwrap() })
    };
    tokio::time::sleep(MS).await; // the waiter queues
    drop(held); // the slot is free, and the waiter is first in line
    assert!(
        one.try_acquire().await.unwrap().is_none(),
        "try_acquire overtook a queued waiter"
    );
    let got = waiter.await.unwrap();
    assert!(got.holds_slot());
}

/// The README: a rate slot reserved by an `acquire` that is then dropped
/// stays spent (errs towards admitting less).
#[tokio::test(start_paused = true)]
async fn a_dropped_acquire_leaves_its_rate_slot_spent() {
    let reg = registry("[limiters.api]\nrate_per_second = 1.0\nburst = 1").await;
    let api = reg.limiter("api").unwrap();
    drop(api.acquire().await.unwrap()); // t = 0
                                        // Reserves the slot at t = 1 s, then is dropped while it sleeps.
    assert!(tokio::time::timeout(100 * MS, api.acquire()).await.is_err());
    tokio::time::sleep(Duration::from_millis(950)).await; // t = 1.05 s
    assert!(
        api.try_acquire().await.unwrap().is_none(),
        "the dropped acquire's slot was handed out again"
    );
    tokio::time::sleep(Duration::from_secs(1)).await; // t = 2.05 s
    assert!(api.try_acquire().await.unwrap().is_some());
}

/// Weighted permits (README: Weighted requests): `n` tokens at one slot,
/// waits as long as the cost needs, exact on paused time; `n` above the
/// burst or `0` fails at once; a weight on a limiter without a rate is refused.
#[tokio::test(start_paused = true)]
async fn weighted_permits_take_their_cost_and_wait_exactly() {
    let reg = registry(
        "[limiters.bytes]\nrate_per_second = 10.0\nburst = 5\n[limiters.slots]\nmax_concurrent = 2\n[limiters.w]\nalgorithm = \"sliding_window\"\nlimit = 4\nwindow_seconds = 1.0",
    )
    .await;
    let bytes = reg.limiter("bytes").unwrap();
    assert_eq!(bytes.acquire_n(3).await.unwrap().waited(), Duration::ZERO);
    assert!(
        bytes.try_acquire_n(3).await.unwrap().is_none(),
        "2 tokens left"
    );
    let p = bytes.acquire_n(3).await.unwrap();
    assert_eq!(p.waited(), Duration::from_millis(100), "one more token");
    assert!(matches!(
        bytes.acquire_n(6).await,
        Err(Error::InsufficientCapacity {
            requested: 6,
            capacity: 5,
            ..
        })
    ));
    assert!(matches!(
        bytes.try_acquire_n(0).await,
        Err(Error::InsufficientCapacity { requested: 0, .. })
    ));
    let refused = bytes.acquire_n_timeout(5, Duration::from_millis(50)).await;
    assert!(
        matches!(refused, Err(Error::Timeout { reason: "rate", .. })),
        "{refused:?}"
    );
    let w = reg.limiter("w").unwrap();
    assert_eq!(w.acquire_n(3).await.unwrap().waited(), Duration::ZERO);
    let started = tokio::time::Instant::now();
    let p = w.acquire_n(2).await.unwrap();
    assert_eq!(
        p.waited(),
        Duration::from_secs(1),
        "the window must empty first"
    );
    assert_eq!(started.elapsed(), Duration::from_secs(1));
    let slots = reg.limiter("slots").unwrap();
    assert!(matches!(
        slots.acquire_n(2).await,
        Err(Error::Unsupported(_))
    ));
    assert!(slots.acquire_n(1).await.is_ok());
}

/// Coalescing (src/limiter/coalesce.rs), on a memory store made to coalesce
/// and to answer 1 ms late, as a distant store would.
mod coalescing {
    use super::*;
    use ratesync::testing::FaultyStore;

    fn coalescing_store(delay: Duration) -> (Arc<FaultyStore>, Registry) {
        let store = Arc::new(FaultyStore::memory());
        store.set_coalescing(true);
        store.delay_reserve_answers(delay);
        let reg = Registry::new();
        reg.add_store("far", store.clone());
        (store, reg)
    }

    /// 40 tasks at once on one key with a burst of 10: exactly 10 grants,
    /// decided in far fewer than 40 round trips.
    #[tokio::test(start_paused = true)]
    async fn concurrent_requests_share_round_trips_and_stay_exact() {
        let (store, reg) = coalescing_store(MS);
        let api = reg
            .register(
                "api",
                LimiterConfig::token_bucket(1.0, 10).with_store("far"),
            )
            .unwrap();
        let tasks: Vec<_> = (0..40)
            .map(|_| {
                let api = api.clone();
                tokio::spawn(async move { api.try_acquire().await.unwrap().is_some() })
            })
            .collect();
        let mut granted = 0;
        for t in tasks {
            granted += usize::from(t.await.unwrap());
        }
        assert_eq!(granted, 10);
        let trips = store.rate_round_trips();
        assert!(trips <= 3, "40 requests took {trips} round trips");
        // The 39 that queued behind the first were decided together.
        assert!(api.metrics().coalesced >= 39, "{:?}", api.metrics());
    }

    /// Waiting requests coalesced with weighted ones: every caller gets its
    /// own slot, and the grants never run ahead of `burst + rate * t`
    /// counted in tokens.
    #[tokio::test(start_paused = true)]
    async fn coalesced_slots_keep_the_rate_in_tokens() {
        let (store, reg) = coalescing_store(MS);
        let api = reg
            .register(
                "api",
                LimiterConfig::token_bucket(100.0, 5).with_store("far"),
            )
            .unwrap();
        let start = Instant::now();
        let tasks: Vec<_> = (0..30u32)
            .map(|i| {
                let api = api.clone();
                tokio::spawn(async move {
                    let cost = 1 + i % 3;
                    let p = api.acquire_n(cost).await.unwrap();
                    drop(p);
                    (Instant::now() - start, cost)
                })
            })
            .collect();
        let mut grants = Vec::new();
        for t in tasks {
            grants.push(t.await.unwrap());
        }
        grants.sort();
        let mut tokens = 0u32;
        for (at, cost) in &grants {
            tokens += cost;
            // 5 tokens at once, then one every 10 ms.
            let allowed = 5 + (at.as_millis() / 10) as u32;
            assert!(tokens <= allowed, "{tokens} tokens by {at:?}: {grants:?}");
        }
        assert_eq!(tokens, 60);
        assert!(store.rate_round_trips() < 30);
        // 60 tokens at 100/s after a burst of 5: the last slot is at 550 ms.
        let last = grants.last().unwrap().0;
        assert!(last >= 550 * MS && last <= 560 * MS, "last at {last:?}");
    }

    /// A caller that gives up while its decision is in flight strands nobody:
    /// the callers queued behind it are still decided, and the key is free.
    #[tokio::test(start_paused = true)]
    async fn a_cancelled_decision_strands_nobody() {
        let (_store, reg) = coalescing_store(10 * MS);
        let api = reg
            .register(
                "api",
                LimiterConfig::token_bucket(1.0, 10).with_store("far"),
            )
            .unwrap();
        let leader = {
            let api = api.clone();
            tokio::spawn(async move {
                tokio::time::timeout(2 * MS, api.try_acquire())
                    .await
                    .is_err()
            })
        };
        tokio::task::yield_now().await;
        let followers: Vec<_> = (0..5)
            .map(|_| {
                let api = api.clone();
                tokio::spawn(async move { api.try_acquire().await })
            })
            .collect();
        assert!(leader.await.unwrap(), "the leader should have given up");
        for f in followers {
            let answer = tokio::time::timeout(Duration::from_secs(1), f)
                .await
                .expect("a queued caller was stranded")
                .unwrap();
            assert!(answer.unwrap().is_some());
        }
        // Nothing is left in flight: a later caller decides at once.
        let p = tokio::time::timeout(Duration::from_secs(1), api.try_acquire()).await;
        assert!(p.expect("the key stayed busy").unwrap().is_some());
    }

    /// A queued caller that gives up before its batch is sent takes no slot.
    #[tokio::test(start_paused = true)]
    async fn a_queued_caller_that_gives_up_takes_nothing() {
        let (_store, reg) = coalescing_store(10 * MS);
        let api = reg
            .register(
                "api",
                LimiterConfig::token_bucket(0.01, 4).with_store("far"),
            )
            .unwrap();
        let leader = {
            let api = api.clone();
            tokio::spawn(async move { api.try_acquire().await.unwrap().is_some() })
        };
        tokio::task::yield_now().await;
        let quitters: Vec<_> = (0..2)
            .map(|_| {
                let api = api.clone();
                tokio::spawn(async move {
                    tokio::time::timeout(5 * MS, api.try_acquire())
                        .await
                        .is_err()
                })
            })
            .collect();
        tokio::task::yield_now().await;
        let stayer = {
            let api = api.clone();
            tokio::spawn(async move { api.try_acquire().await.unwrap().is_some() })
        };
        assert!(leader.await.unwrap());
        for q in quitters {
            assert!(q.await.unwrap(), "a quitter was answered before it gave up");
        }
        assert!(stayer.await.unwrap());
        // Two of the four tokens went; the quitters took none.
        match api.state().await.unwrap().rate {
            Some(RateState::TokenBucket { remaining, .. }) => assert_eq!(remaining, 2),
            other => panic!("unexpected state {other:?}"),
        }
    }
}
