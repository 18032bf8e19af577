//! What the engine benches share: the measured loop and the medians.

use ratesync::Limiter;
use std::time::Instant;

/// Rounds per figure; the tables give their medians.
pub const ROUNDS: usize = 5;

/// The median of a few measurements.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The limiters a round runs on: `api` itself for one key, else `keys`
/// per-key limiters derived from it.
#[allow(dead_code)] // the Redis bench measures one key only
pub fn spread(api: &Limiter, keys: usize) -> Vec<Limiter> {
    if keys == 1 {
        vec![api.clone()]
    } else {
        (0..keys).map(|i| api.key(format!("k{i}"))).collect()
    }
}

/// `calls` try_acquire spread over `tasks` tasks, task `i` on limiter
/// `i % limiters.len()`; acquisitions per second.
#[allow(dead_code)] // the policy bench derives its limiters per call
pub async fn try_acquire_rate(limiters: &[Limiter], tasks: usize, calls: usize) -> f64 {
    let per_task = calls / tasks;
    let start = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|i| {
            let lim = limiters[i % limiters.len()].clone();
            tokio::spawn(async move {
                for _ in 0..per_task {
                    let p = lim.try_acquire().await.expect("the store answers");
                    assert!(p.is_some(), "the bench limit was reached");
                }
            })
        })
        .collect();
    for h in handles {
        h.await.expect("bench task");
    }
    (per_task * tasks) as f64 / start.elapsed().as_secs_f64()
}

/// `cargo test --benches` runs bench binaries with `--list`; nothing to list.
pub fn listing_only() -> bool {
    std::env::args().any(|a| a == "--list")
}

/// `calls` policy checks over `tasks` tasks, task `i` asking `request(i)`
/// every time, each admitted; checks per second.
#[allow(dead_code)] // the engine benches measure limiters only
pub async fn policy_rate(
    p: &ratesync::policy::Policy,
    tasks: usize,
    calls: usize,
    request: impl Fn(usize) -> ratesync::policy::Request,
) -> f64 {
    let per_task = calls / tasks;
    let start = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|i| {
            let p = p.clone();
            let req = request(i);
            tokio::spawn(async move {
                for _ in 0..per_task {
                    let d = p.check(&req).await.expect("the store answers");
                    assert!(d.allowed, "the bench limit was reached: {d:?}");
                }
            })
        })
        .collect();
    for h in handles {
        h.await.expect("bench task");
    }
    (per_task * tasks) as f64 / start.elapsed().as_secs_f64()
}
