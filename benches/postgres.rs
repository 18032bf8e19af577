//! try_acquire on the PostgreSQL engine against `pgbench -f` running the same
//! function call, at 1, 16 and 64 concurrent callers, on one key and on
//! 1,000 keys, in one run.
//!
//! Run with `cargo bench --bench postgres` (PostgreSQL at `DATABASE_URL`,
//! default `postgres://root@127.0.0.1:5432/test`, and `pgbench` on PATH).
//! Rounds alternate ratesync and pgbench so machine noise hits both alike;
//! the table gives medians and their ratio. pgbench opens one connection per
//! client; ratesync's tasks share its pool (`pool_size`, 8 here) and queue
//! per key in the process, as the engine always does.

#[allow(dead_code)] // the other engines' references
#[path = "../cli/src/bench/baseline.rs"]
mod baseline;
mod common;

use common::{listing_only, median, spread, try_acquire_rate, ROUNDS};
use ratesync::Registry;

const SCHEMA: &str = "ratesync_bench";

fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/test".to_string())
}

fn main() {
    if listing_only() {
        return;
    }
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let reg = rt
        .block_on(Registry::from_toml_str(&format!(
            "[stores.pg]\nengine = \"postgres\"\nurl = \"{}\"\nschema = \"{SCHEMA}\"\nkey_prefix = \"bench\"\n\
             [limiters.api]\nstore = \"pg\"\nrate_per_second = 1000000\nburst = 1000000\n",
            database_url()
        )))
        .expect("connect to PostgreSQL (DATABASE_URL)");
    let api = reg.limiter("api").expect("limiter");
    println!("keys   callers  ratesync acq/s  pgbench tps  ratio   (medians of {ROUNDS} rounds)");
    for keys in [1usize, 1000] {
        let lims = spread(&api, keys);
        for callers in [1usize, 16, 64] {
            let calls = if callers == 1 { 5_000 } else { 20_000 };
            rt.block_on(try_acquire_rate(&lims, callers, calls / 10)); // warm-up
            let (mut a, mut b) = (Vec::new(), Vec::new());
            for _ in 0..ROUNDS {
                a.push(rt.block_on(try_acquire_rate(&lims, callers, calls)));
                // The limiter's own key(s): emission 1 us, burst 1,000,000, never wait.
                let r = baseline::postgres(
                    &database_url(),
                    SCHEMA,
                    "bench:api",
                    keys,
                    [1, 1, 1_000_000, 0],
                    callers,
                    3,
                );
                b.push(r.expect("pgbench (is it on PATH?)").ops_per_second);
            }
            let (a, b) = (median(a), median(b));
            println!(
                "{keys:>5}  {callers:>7}  {a:>14.0}  {b:>11.0}  {:>5.1}%",
                a / b * 100.0
            );
        }
    }
}
