//! The engine contract: the same checks of the `Engine` trait's semantics, run against every engine.
//!
//! These run on real time against real services, so they compare the waits
//! an engine *returns* (computed on its clock), never how long a call took.

use ratesync::config::{ConcurrencySpec, RateSpec};
use ratesync::engine::{
    BatchReservation, Ctx, Engine, HolderId, LeaseOutcome, RateRequest, RateState, Reservation,
};
use ratesync::gcra::Gcra;
use ratesync::metrics::Metrics;
use ratesync::window::SlidingWindow;
use ratesync::StateKey;
use std::time::Duration;

/// How far two waits computed at slightly different moments may differ.
const SLACK: Duration = Duration::from_millis(150);

fn near(actual: Duration, expected: Duration) -> bool {
    actual + SLACK >= expected && actual <= expected + SLACK
}

fn bucket(rate: f64, burst: u32) -> RateSpec {
    RateSpec::TokenBucket(Gcra::new(rate, burst).expect("valid bucket"))
}

async fn reserve(
    e: &dyn Engine,
    key: &StateKey,
    rate: &RateSpec,
    max_wait: Duration,
) -> Reservation {
    let metrics = Metrics::new();
    e.reserve(
        Ctx {
            key,
            metrics: &metrics,
        },
        rate,
        max_wait,
    )
    .await
    .expect("engine answers")
}

fn granted(r: Reservation) -> Duration {
    match r {
        Reservation::Granted { wait, .. } => wait,
        other => panic!("expected a grant, got {other:?}"),
    }
}

/// Runs every check on `engine`, with keys under `scope` so runs never meet.
pub async fn run_all(name: &str, engine: &dyn Engine, scope: &str) {
    reservations_wait_and_refuse(engine, scope).await;
    if engine.atomic_batches() {
        batches_charge_every_key_when_the_caller_proceeds(engine, scope).await;
    } else {
        let key = StateKey::new(scope).child("no-batch");
        let metrics = Metrics::new();
        let items = [(
            Ctx {
                key: &key,
                metrics: &metrics,
            },
            bucket(1.0, 1),
        )];
        assert!(
            e_batch_refused(engine.reserve_all(&items, Duration::ZERO).await),
            "{name}: an engine without atomic batches must refuse reserve_all"
        );
    }
    windows_are_exact(engine, scope).await;
    leases_cap_renew_release_and_expire(engine, scope).await;
    a_release_fences_a_late_acquire(engine, scope).await;
    a_reset_forgets_the_key_and_wakes_its_waiters(engine, scope).await;
    weighted_requests_take_their_cost_at_one_slot(engine, scope).await;
    a_batch_decides_each_request_in_order(engine, scope).await;
    a_batch_equals_the_same_requests_one_by_one(engine, scope).await;
    println!("{name}: engine contract holds");
}

fn e_batch_refused<T>(r: Result<T, ratesync::BackendError>) -> bool {
    r.is_err()
}

async fn reservations_wait_and_refuse(e: &dyn Engine, scope: &str) {
    // One token every 2 s, two at once: slow enough that a loaded machine
    // (the CI's two cores, a cluster waiting for its replicas) still makes
    // the first three calls within one refill. Slots are compared on the
    // store's clock (`slot_unix_us`), so the calls' own durations do not
    // count; waits, which do, are only bounded.
    let key = StateKey::new(scope).child("reserve");
    let rate = bucket(0.5, 2);
    let slot = |r: Reservation| match r {
        Reservation::Granted { slot_unix_us, .. } => slot_unix_us.expect("a slot time"),
        other => panic!("expected a grant, got {other:?}"),
    };
    let first = reserve(e, &key, &rate, Duration::ZERO).await;
    assert_eq!(granted(first), Duration::ZERO);
    let s1 = slot(first);
    assert_eq!(
        granted(reserve(e, &key, &rate, Duration::ZERO).await),
        Duration::ZERO
    );
    // Empty: a caller that will not wait is refused and nothing is reserved.
    match reserve(e, &key, &rate, Duration::ZERO).await {
        Reservation::Denied { retry_after } => assert!(
            retry_after > Duration::ZERO && retry_after <= Duration::from_secs(2) + SLACK,
            "{retry_after:?}"
        ),
        other => panic!("an empty bucket granted {other:?}"),
    }
    // One that will wait gets the next slot, and the one after it the next.
    let (r1, r2) = (
        reserve(e, &key, &rate, Duration::from_secs(5)).await,
        reserve(e, &key, &rate, Duration::from_secs(5)).await,
    );
    let (d1, d2) = (slot(r1) - s1, slot(r2) - s1);
    // Whole microseconds on the network engines: a slot may round by one.
    assert!(
        d1.abs_diff(2_000_000) <= 1,
        "the first slot {d1} us after the first grant"
    );
    assert!(
        d2.abs_diff(4_000_000) <= 1,
        "the next slot {d2} us after the first grant"
    );
    assert!(granted(r1) <= Duration::from_secs(2) && granted(r2) <= Duration::from_secs(4));
    // A slot beyond the bound is refused without being taken.
    match reserve(e, &key, &rate, Duration::from_millis(100)).await {
        Reservation::Denied { retry_after } => assert!(
            retry_after > Duration::from_millis(100) && retry_after <= Duration::from_secs(6),
            "{retry_after:?}"
        ),
        other => panic!("{other:?}"),
    }
    let metrics = Metrics::new();
    match e
        .rate_state(
            Ctx {
                key: &key,
                metrics: &metrics,
            },
            &rate,
        )
        .await
        .expect("state")
    {
        RateState::TokenBucket {
            remaining,
            burst,
            retry_after,
            reset_after,
        } => {
            assert_eq!((remaining, burst), (0, 2));
            assert!(retry_after <= Duration::from_secs(6), "{retry_after:?}");
            // Full once the four taken have refilled: 2 s after the next slot.
            assert!(
                near(reset_after, retry_after + Duration::from_secs(2)),
                "{reset_after:?} vs {retry_after:?}"
            );
        }
        other => panic!("{other:?}"),
    }
}

/// `reserve_all` charges every key at the slot the caller proceeds at (the
/// latest of them), not at each key's own earliest: otherwise a key reserved
/// early but used late admits its next caller too soon.
async fn batches_charge_every_key_when_the_caller_proceeds(e: &dyn Engine, scope: &str) {
    let fresh = StateKey::new(scope).child("batch-fresh");
    let busy = StateKey::new(scope).child("batch-busy");
    let rate = bucket(1.0, 1);
    granted(reserve(e, &busy, &rate, Duration::ZERO).await); // busy's next slot: +1 s
    let metrics = Metrics::new();
    let items = [&fresh, &busy].map(|key| {
        let ctx = Ctx {
            key,
            metrics: &metrics,
        };
        (ctx, rate)
    });
    match e
        .reserve_all(&items, Duration::from_secs(5))
        .await
        .expect("engine answers")
    {
        BatchReservation::Granted { wait } => {
            assert!(near(wait, Duration::from_secs(1)), "{wait:?}")
        }
        other => panic!("{other:?}"),
    }
    // `fresh` was used at +1 s, so its next slot is +2 s.
    let next = granted(reserve(e, &fresh, &rate, Duration::from_secs(5)).await);
    assert!(
        near(next, Duration::from_secs(2)),
        "fresh's next slot after {next:?}"
    );
    // A refusal names the item and takes from none.
    let other = StateKey::new(scope).child("batch-other");
    let items = [&other, &busy].map(|key| {
        let ctx = Ctx {
            key,
            metrics: &metrics,
        };
        (ctx, rate)
    });
    match e
        .reserve_all(&items, Duration::ZERO)
        .await
        .expect("engine answers")
    {
        BatchReservation::Denied { index, .. } => assert_eq!(index, 1),
        g => panic!("{g:?}"),
    }
    assert_eq!(
        granted(reserve(e, &other, &rate, Duration::ZERO).await),
        Duration::ZERO
    );
}

async fn windows_are_exact(e: &dyn Engine, scope: &str) {
    let key = StateKey::new(scope).child("window");
    let rate = RateSpec::SlidingWindow(SlidingWindow::new(3, 2_000_000_000).expect("valid window"));
    for _ in 0..3 {
        assert_eq!(
            granted(reserve(e, &key, &rate, Duration::ZERO).await),
            Duration::ZERO
        );
    }
    // The fourth fits once the first has left the window: 2 s after it.
    match reserve(e, &key, &rate, Duration::ZERO).await {
        Reservation::Denied { retry_after } => {
            assert!(near(retry_after, Duration::from_secs(2)), "{retry_after:?}")
        }
        other => panic!("a full window granted {other:?}"),
    }
    let w = granted(reserve(e, &key, &rate, Duration::from_secs(5)).await);
    assert!(near(w, Duration::from_secs(2)), "{w:?}");
}

async fn leases_cap_renew_release_and_expire(e: &dyn Engine, scope: &str) {
    let key = StateKey::new(scope).child("lease");
    let metrics = Metrics::new();
    let ctx = || Ctx {
        key: &key,
        metrics: &metrics,
    };
    let spec = ConcurrencySpec {
        max: 2,
        lease: Duration::from_millis(600),
    };
    let (a, b, c) = (HolderId::new(), HolderId::new(), HolderId::new());
    assert!(matches!(
        e.acquire_lease(ctx(), &a, &spec).await.unwrap(),
        LeaseOutcome::Acquired { holders: 1 }
    ));
    assert!(matches!(
        e.acquire_lease(ctx(), &b, &spec).await.unwrap(),
        LeaseOutcome::Acquired { holders: 2 }
    ));
    match e.acquire_lease(ctx(), &c, &spec).await.unwrap() {
        LeaseOutcome::Full { retry_after } => assert!(retry_after <= spec.lease, "{retry_after:?}"),
        other => panic!("a third holder of 2 slots: {other:?}"),
    }
    let st = e.lease_state(ctx(), &spec).await.unwrap();
    assert_eq!((st.holders, st.max), (2, 2));
    // Release frees a slot at once; releasing twice is harmless.
    assert!(e.release_lease(ctx(), &b,).await.unwrap());
    assert!(!e.release_lease(ctx(), &b).await.unwrap());
    assert!(matches!(
        e.acquire_lease(ctx(), &c, &spec).await.unwrap(),
        LeaseOutcome::Acquired { holders: 2 }
    ));
    // `a` renews, `c` does not: after the lease only `a` is left.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(e.renew_lease(ctx(), &a, spec.lease).await.unwrap());
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(e.lease_state(ctx(), &spec).await.unwrap().holders, 1);
    assert!(
        !e.renew_lease(ctx(), &c, spec.lease).await.unwrap(),
        "an expired lease was renewed"
    );
    assert!(e.release_lease(ctx(), &a).await.unwrap());
    assert_eq!(e.lease_state(ctx(), &spec).await.unwrap().holders, 0);
}

/// A caller that gave up on a slot request at `response_timeout` releases
/// at once, and that release may reach the store before the request does
/// (another connection). The store must then refuse the late request for
/// that holder, or the slot stays held with nobody to release it.
async fn a_release_fences_a_late_acquire(e: &dyn Engine, scope: &str) {
    let key = StateKey::new(scope).child("fence");
    let metrics = Metrics::new();
    let ctx = || Ctx {
        key: &key,
        metrics: &metrics,
    };
    let spec = ConcurrencySpec {
        max: 1,
        lease: Duration::from_secs(30),
    };
    let late = HolderId::new();
    assert!(
        !e.release_lease(ctx(), &late).await.unwrap(),
        "the holder held nothing yet"
    );
    match e.acquire_lease(ctx(), &late, &spec).await.unwrap() {
        LeaseOutcome::Full { .. } => {}
        other => panic!("an acquire that arrived after its release took a slot: {other:?}"),
    }
    let st = e.lease_state(ctx(), &spec).await.unwrap();
    assert_eq!(st.holders, 0, "the fence holds no slot");
    // Other holders are unaffected.
    let other = HolderId::new();
    assert!(matches!(
        e.acquire_lease(ctx(), &other, &spec).await.unwrap(),
        LeaseOutcome::Acquired { holders: 1 }
    ));
    assert!(e.release_lease(ctx(), &other).await.unwrap());
    assert_eq!(e.lease_state(ctx(), &spec).await.unwrap().holders, 0);
}

/// `reset` forgets one key (a full bucket, an empty window, no holders),
/// wakes the key's waiters, leaves other keys alone, and is harmless twice.
async fn a_reset_forgets_the_key_and_wakes_its_waiters(e: &dyn Engine, scope: &str) {
    let metrics = Metrics::new();
    let (key, other) = (
        StateKey::new(scope).child("reset"),
        StateKey::new(scope).child("reset-other"),
    );
    let ctx = |key| Ctx {
        key,
        metrics: &metrics,
    };
    let rate = bucket(0.1, 1);
    let spec = ConcurrencySpec {
        max: 1,
        lease: Duration::from_secs(30),
    };
    granted(reserve(e, &key, &rate, Duration::ZERO).await);
    granted(reserve(e, &other, &rate, Duration::ZERO).await);
    let holder = HolderId::new();
    assert!(matches!(
        e.acquire_lease(ctx(&key), &holder, &spec).await.unwrap(),
        LeaseOutcome::Acquired { .. }
    ));
    let mut woken = e.subscribe_releases(ctx(&key)).await.unwrap();
    let removed = e.reset(ctx(&key)).await.expect("every engine resets");
    assert!(
        removed >= 1,
        "reset removed {removed} entries of a key with state"
    );
    assert!(
        tokio::time::timeout(Duration::from_secs(2), woken.released())
            .await
            .is_ok(),
        "a reset did not wake the key's waiters"
    );
    // The key is fresh: its token is back and its slot free.
    granted(reserve(e, &key, &rate, Duration::ZERO).await);
    assert_eq!(e.lease_state(ctx(&key), &spec).await.unwrap().holders, 0);
    assert!(
        !e.renew_lease(ctx(&key), &holder, spec.lease).await.unwrap(),
        "a lease survived the reset"
    );
    // The other key is untouched: its one token is still spent.
    assert!(matches!(
        reserve(e, &other, &rate, Duration::ZERO).await,
        Reservation::Denied { .. }
    ));
    e.reset(ctx(&key)).await.unwrap();
    assert_eq!(
        e.reset(ctx(&key)).await.unwrap(),
        0,
        "nothing left to remove"
    );
}

/// `reserve_n`: a request of `cost` takes that many tokens (window grants)
/// at one slot, waits as long as the cost needs, and one above the capacity
/// never fits.
async fn weighted_requests_take_their_cost_at_one_slot(e: &dyn Engine, scope: &str) {
    let metrics = Metrics::new();
    let reserve_n = |key: &StateKey, rate: RateSpec, cost: u32, max_wait: Duration| {
        let metrics = &metrics;
        let key = key.clone();
        async move {
            e.reserve_n(Ctx { key: &key, metrics }, &rate, cost, max_wait)
                .await
                .expect("engine answers")
        }
    };
    // 10/s, burst 5: 3 now, then 3 more need one token more: 100 ms.
    let key = StateKey::new(scope).child("weighted-bucket");
    let rate = bucket(10.0, 5);
    assert!(near(
        granted(reserve_n(&key, rate, 3, Duration::ZERO).await),
        Duration::ZERO
    ));
    match reserve_n(&key, rate, 3, Duration::ZERO).await {
        Reservation::Denied { retry_after } => assert!(
            near(retry_after, Duration::from_millis(100)),
            "{retry_after:?}"
        ),
        other => panic!("3 of 2 remaining tokens: {other:?}"),
    }
    let wait = granted(reserve_n(&key, rate, 3, Duration::from_secs(1)).await);
    assert!(near(wait, Duration::from_millis(100)), "{wait:?}");
    // Six taken by 100 ms: one more token comes at 200 ms.
    let next = granted(reserve_n(&key, rate, 1, Duration::from_secs(2)).await);
    assert!(near(next, Duration::from_millis(200)), "{next:?}");
    // A window of 5 per 2 s: 4 at once, then 2 must wait for the window.
    let key = StateKey::new(scope).child("weighted-window");
    let window = RateSpec::SlidingWindow(SlidingWindow::new(5, 2_000_000_000).unwrap());
    assert!(near(
        granted(reserve_n(&key, window, 4, Duration::ZERO).await),
        Duration::ZERO
    ));
    assert!(near(
        granted(reserve_n(&key, window, 1, Duration::ZERO).await),
        Duration::ZERO
    ));
    match reserve_n(&key, window, 2, Duration::ZERO).await {
        Reservation::Denied { retry_after } => {
            assert!(near(retry_after, Duration::from_secs(2)), "{retry_after:?}")
        }
        other => panic!("a window of 5 with 5 used gave 2 more: {other:?}"),
    }
    // Above the capacity: never.
    assert!(matches!(
        reserve_n(&key, bucket(10.0, 5), 6, Duration::from_secs(3600)).await,
        Reservation::Denied { .. }
    ));
}

/// `reserve_many` (what coalescing sends): each request decided as a
/// `reserve_n` after the one before would be, a refused one changing
/// nothing, in one call; the same waits as the weighted check above.
async fn a_batch_decides_each_request_in_order(e: &dyn Engine, scope: &str) {
    let metrics = Metrics::new();
    let many = |key: &StateKey, rate: RateSpec, requests: Vec<(u32, Duration)>| {
        let metrics = &metrics;
        let key = key.clone();
        async move {
            let requests: Vec<RateRequest> = requests
                .into_iter()
                .map(|(cost, max_wait)| RateRequest { cost, max_wait })
                .collect();
            e.reserve_many(Ctx { key: &key, metrics }, &rate, &requests)
                .await
                .expect("engine answers")
        }
    };
    let key = StateKey::new(scope).child("batch-bucket");
    let rate = bucket(10.0, 5);
    let (zero, second) = (Duration::ZERO, Duration::from_secs(1));
    let out = many(
        &key,
        rate,
        vec![
            (3, zero),
            (3, zero),
            (3, second),
            (6, Duration::from_secs(3600)),
            (1, 2 * second),
        ],
    )
    .await;
    assert_eq!(out.len(), 5, "{out:?}");
    assert!(near(granted(out[0]), zero), "{out:?}");
    match out[1] {
        Reservation::Denied { retry_after } => {
            assert!(near(retry_after, Duration::from_millis(100)), "{out:?}")
        }
        _ => panic!("3 of 2 remaining tokens in a batch: {out:?}"),
    }
    assert!(near(granted(out[2]), Duration::from_millis(100)), "{out:?}");
    assert!(matches!(out[3], Reservation::Denied { .. }), "{out:?}");
    assert!(near(granted(out[4]), Duration::from_millis(200)), "{out:?}");
    let slot = |r: Reservation| match r {
        Reservation::Granted { slot_unix_us, .. } => slot_unix_us,
        _ => None,
    };
    assert!(
        slot(out[0]) <= slot(out[2]) && slot(out[2]) <= slot(out[4]),
        "{out:?}"
    );
    // The batch stored what it granted, and nothing of what it refused.
    let next = granted(reserve(e, &key, &rate, 2 * second).await);
    assert!(near(next, Duration::from_millis(300)), "{next:?}");
    // A window of 5 per 2 s: 4, then 1, then 2 must wait for the window.
    let key = StateKey::new(scope).child("batch-window");
    let window = RateSpec::SlidingWindow(SlidingWindow::new(5, 2_000_000_000).unwrap());
    let out = many(&key, window, vec![(4, zero), (1, zero), (2, zero)]).await;
    assert!(
        near(granted(out[0]), zero) && near(granted(out[1]), zero),
        "{out:?}"
    );
    match out[2] {
        Reservation::Denied { retry_after } => {
            assert!(near(retry_after, 2 * second), "{out:?}")
        }
        _ => panic!("a window of 5 with 5 used gave 2 more in a batch: {out:?}"),
    }
    assert!(many(&key, window, Vec::new()).await.is_empty());
}

/// `reserve_many` on a random sequence of requests answers what the same
/// requests answer one `reserve_n` at a time, on a bucket and on a window:
/// the same grants and refusals, the same waits. Costs 1..=3; bounds of 0,
/// 2.5 s or unbounded, while slots fall on whole seconds (1 token/s; a
/// window of 4 per 3 s), so no bound lies near a wait and the two runs,
/// a few milliseconds apart, cannot differ by timing. The seed is printed.
async fn a_batch_equals_the_same_requests_one_by_one(e: &dyn Engine, scope: &str) {
    let metrics = Metrics::new();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        | 1;
    let mut x = seed;
    let mut next = move |n: u64| {
        // xorshift64: enough for a test's choices, reproducible from the seed.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let requests: Vec<RateRequest> = (0..12)
        .map(|_| RateRequest {
            cost: 1 + next(3) as u32,
            max_wait: [Duration::ZERO, Duration::from_millis(2500), Duration::MAX]
                [next(3) as usize],
        })
        .collect();
    let specs = [
        ("bucket", bucket(1.0, 4)),
        (
            "window",
            RateSpec::SlidingWindow(SlidingWindow::new(4, 3_000_000_000).unwrap()),
        ),
    ];
    for (name, rate) in specs {
        let batch_key = StateKey::new(scope).child(&format!("random-batch-{name}-{seed}"));
        let single_key = StateKey::new(scope).child(&format!("random-single-{name}-{seed}"));
        let ctx = |key| Ctx {
            key,
            metrics: &metrics,
        };
        let batch = e
            .reserve_many(ctx(&batch_key), &rate, &requests)
            .await
            .expect("engine answers");
        let mut single = Vec::new();
        for r in &requests {
            single.push(
                e.reserve_n(ctx(&single_key), &rate, r.cost, r.max_wait)
                    .await
                    .expect("engine answers"),
            );
        }
        assert_eq!(batch.len(), requests.len());
        for (i, (b, s)) in batch.iter().zip(&single).enumerate() {
            let same = match (b, s) {
                (Reservation::Granted { wait: a, .. }, Reservation::Granted { wait: b, .. }) => {
                    near(*a, *b)
                }
                (
                    Reservation::Denied { retry_after: a },
                    Reservation::Denied { retry_after: b },
                ) => near(*a, *b),
                _ => false,
            };
            assert!(
                same,
                "{name}, seed {seed}, request {i} {:?}: batched {b:?}, one by one {s:?}",
                requests[i]
            );
        }
    }
}
