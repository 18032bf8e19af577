//! Quickstart on the in-memory engine: acquire, try_acquire, a concurrency
//! permit, a per-key limiter, and the metrics. Run with
//! `cargo run --example quickstart` (reads ./config.toml).

use std::time::{Duration, Instant};

#[tokio::main]
async fn main() -> ratesync::Result<()> {
    let registry = ratesync::Registry::from_file("config.toml").await?;
    println!("limiters: {}", registry.names().join(", "));

    // A token bucket of 2/s with bursts of 5: five at once, then one every 500 ms.
    let per_user = registry.limiter("per_user")?.key("alice");
    let start = Instant::now();
    for i in 1..=7 {
        let permit = per_user.acquire_timeout(Duration::from_secs(2)).await?;
        println!(
            "per_user[alice] #{i}: granted at {:>4} ms (waited {:>4} ms)",
            start.elapsed().as_millis(),
            permit.waited().as_millis()
        );
    }

    // try_acquire never waits: the bucket is empty now.
    match per_user.try_acquire().await? {
        Some(_) => println!("per_user[alice]: try_acquire granted"),
        None => println!("per_user[alice]: try_acquire refused (bucket empty), nothing waited"),
    }
    // Another key has its own bucket.
    let bob = registry.limiter("per_user")?.key("bob");
    println!(
        "per_user[bob]: try_acquire {}",
        if bob.try_acquire().await?.is_some() {
            "granted"
        } else {
            "refused"
        }
    );

    // Concurrency: at most 3 jobs at once; the 4th waits for a release.
    let jobs = registry.limiter("jobs")?;
    let held: Vec<_> = [
        jobs.acquire().await?,
        jobs.acquire().await?,
        jobs.acquire().await?,
    ]
    .into();
    println!(
        "jobs: 3 slots held; try_acquire -> {}",
        if jobs.try_acquire().await?.is_some() {
            "granted"
        } else {
            "refused"
        }
    );
    let waiter = {
        let jobs = jobs.clone();
        tokio::spawn(async move { jobs.acquire().await.map(|p| p.waited()) })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    drop(held); // frees the three slots, waking the waiter at once
    let waited = waiter.await.expect("waiter task")?;
    println!(
        "jobs: the 4th acquire waited {} ms for a release",
        waited.as_millis()
    );

    // A sliding window: exactly 5 logins per 60 s.
    let login = registry
        .limiter("login")?
        .key(ratesync::hash_key("alice@example.com"));
    let mut granted = 0;
    while login.try_acquire().await?.is_some() {
        granted += 1;
    }
    println!("login[hash(alice)]: {granted} attempts allowed in the window, then refused");

    for (name, m) in registry.metrics() {
        println!(
            "metrics {name:>8}: acquisitions {:>2}  timeouts {}  avg wait {:>6.1} ms  max wait {:>6.1} ms  concurrent {}  cap hits {}  releases {}",
            m.total_acquisitions,
            m.timeouts,
            m.avg_wait_time_ms,
            m.max_wait_time_ms,
            m.current_concurrent,
            m.max_concurrent_reached,
            m.total_releases
        );
    }
    Ok(())
}
