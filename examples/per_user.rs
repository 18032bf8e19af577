//! Per-user limiting: one named policy, a limiter per user derived with
//! `.key(..)`. A greedy user is throttled while a polite one is not, because
//! each user has a bucket of their own. Run with `cargo run --example per_user`.

use std::time::{Duration, Instant};

#[tokio::main]
async fn main() -> ratesync::Result<()> {
    // Built in code here; the same policy could come from config.toml.
    let registry = ratesync::Registry::new();
    let per_user = registry.register(
        "per_user",
        ratesync::LimiterConfig::token_bucket(5.0, 2).with_timeout(Duration::from_millis(300)),
    )?;

    let start = Instant::now();
    // Each user fires a volley of concurrent requests every 500 ms, three
    // times: the greedy one 10 at once, the polite one 2.
    for (user, volley) in [("greedy", 10), ("polite", 2)] {
        let limiter = per_user.key(user);
        let (mut served, mut throttled, mut retry_after) = (0, 0, Duration::ZERO);
        for _ in 0..3 {
            let requests: Vec<_> = (0..volley)
                .map(|_| {
                    let limiter = limiter.clone();
                    tokio::spawn(async move { limiter.acquire().await })
                })
                .collect();
            for r in requests {
                match r.await.expect("request task") {
                    Ok(_permit) => served += 1,
                    // Over the limit: an HTTP service answers 429 with Retry-After.
                    Err(e) if e.is_timeout() => {
                        throttled += 1;
                        retry_after = retry_after.max(e.retry_after().unwrap_or_default());
                    }
                    Err(e) => return Err(e),
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        println!(
            "{user:>6}: {served:>2} served, {throttled:>2} throttled (longest Retry-After {} ms)",
            retry_after.as_millis()
        );
    }
    let m = per_user.metrics();
    println!(
        "after {:.1} s: {} acquisitions, {} timeouts, avg wait {:.1} ms (metrics are shared by all users)",
        start.elapsed().as_secs_f64(),
        m.total_acquisitions,
        m.timeouts,
        m.avg_wait_time_ms
    );
    Ok(())
}
