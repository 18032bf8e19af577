//! try_acquire on the Redis engine against `redis-benchmark` running the same
//! EVALSHA, at 1, 16 and 64 concurrent callers, in one run.
//!
//! Run with `cargo bench --bench redis` (Redis at `REDIS_URL`, default
//! 127.0.0.1:6379, and `redis-benchmark` on PATH). Each round measures
//! ratesync, then `redis-benchmark -c <callers>` on the reserve script with
//! the same arguments, alternating so that machine noise hits both alike;
//! the table gives the medians of the rounds and their ratio.
//!
//! The limit is far above the offered load, so every call is a grant (the
//! path that writes state). ratesync's callers are tasks on one tokio runtime
//! sharing one multiplexed connection; redis-benchmark's are connections.

#[allow(dead_code)] // the other engines' references
#[path = "../cli/src/bench/baseline.rs"]
mod baseline;
mod common;

use common::{listing_only, median, try_acquire_rate, ROUNDS};
use ratesync::Registry;

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_string())
}

fn main() {
    if listing_only() {
        return;
    }
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let url = redis_url();
    let reg = rt
        .block_on(Registry::from_toml_str(&format!(
            "[stores.r]\nengine = \"redis\"\nurl = \"{url}\"\nkey_prefix = \"bench\"\n\
             [limiters.api]\nstore = \"r\"\nrate_per_second = 1000000\nburst = 1000000\n"
        )))
        .expect("connect to Redis (REDIS_URL)");
    let lim = reg.limiter("api").expect("limiter");
    let key = format!("bench:{{{}}}:r", lim.state_key().encoded());
    println!(
        "callers  ratesync acq/s  redis-benchmark req/s  ratio   (medians of {ROUNDS} rounds)"
    );
    for callers in [1usize, 16, 64] {
        let calls = if callers == 1 { 20_000 } else { 100_000 };
        let lims = [lim.clone()];
        rt.block_on(try_acquire_rate(&lims, callers, calls / 10)); // warm-up
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            a.push(rt.block_on(try_acquire_rate(&lims, callers, calls)));
            // kind 1 (token bucket), emission 1 us, burst 1,000,000, max_wait 0
            let r = rt.block_on(baseline::redis(
                &url,
                &key,
                [1, 1, 1_000_000, 0],
                callers,
                calls as u64,
            ));
            b.push(r.expect("redis-benchmark (is it on PATH?)").ops_per_second);
        }
        let (a, b) = (median(a), median(b));
        println!(
            "{callers:>7}  {a:>15.0}  {b:>21.0}  {:>5.1}%",
            a / b * 100.0
        );
    }
}
