//! try_acquire on the NATS KV engine beside a raw async-nats `entry` +
//! `update` loop on the same server, at 1, 16 and 64 tasks, on one key and
//! on 1,000 keys, in one run; with the CAS conflict rate of each. The raw
//! loop is `ratesync bench --baseline`'s NATS reference (cli/src/bench/baseline.rs).
//!
//! Run with `cargo bench --bench nats` (NATS with JetStream at `NATS_URL`,
//! default 127.0.0.1:4222). Rounds alternate ratesync and the raw loop so
//! machine noise hits both alike; the table gives medians and their ratio.
//! The raw loop is what a hand-written CAS limiter does: read, then update
//! with the revision read, again on conflict.

#[allow(dead_code)] // the other engines' references
#[path = "../cli/src/bench/baseline.rs"]
mod baseline;
mod common;

use common::{listing_only, median, spread, try_acquire_rate, ROUNDS};
use ratesync::config::StoreConfig;
use ratesync::engine::nats::NatsEngine;
use ratesync::{LimiterConfig, Registry};
use std::sync::Arc;
use std::time::Duration;

/// How long each round of the raw loop runs.
const RAW_RUN: Duration = Duration::from_secs(2);

fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_string())
}

fn main() {
    if listing_only() {
        return;
    }
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let url = nats_url();
    let cfg: StoreConfig = toml::from_str(&format!(
        "engine = \"nats\"\nurl = \"{url}\"\nbucket = \"ratesync_bench\"\nkey_prefix = \"bench\""
    ))
    .expect("store config");
    let engine = Arc::new(
        rt.block_on(NatsEngine::connect("n", &cfg))
            .expect("connect to NATS"),
    );
    let reg = Registry::new();
    reg.add_store("n", engine.clone());
    let api = reg
        .register(
            "api",
            LimiterConfig::token_bucket(1e9, 1_000_000_000).with_store("n"),
        )
        .expect("limiter");
    println!(
        "keys   tasks  ratesync acq/s  raw get+update/s  ratio   CAS conflicts: ratesync  raw   (medians of {ROUNDS} rounds)"
    );
    for keys in [1usize, 1000] {
        let lims = spread(&api, keys);
        for tasks in [1usize, 16, 64] {
            let calls = if tasks == 1 { 3_000 } else { 10_000 };
            rt.block_on(try_acquire_rate(&lims, tasks, calls / 10)); // warm-up
            let (mut a, mut b, mut raw_conflicts) = (Vec::new(), Vec::new(), Vec::new());
            let before = engine.cas_counts();
            for _ in 0..ROUNDS {
                a.push(rt.block_on(try_acquire_rate(&lims, tasks, calls)));
                let r = rt
                    .block_on(baseline::nats(
                        &url,
                        "ratesync_bench",
                        "bench/raw",
                        keys,
                        tasks,
                        RAW_RUN,
                    ))
                    .expect("the raw loop");
                b.push(r.ops_per_second);
                raw_conflicts.push(r.conflict_rate.unwrap_or(0.0));
            }
            let after = engine.cas_counts();
            let ours_conflicts = (after.conflicts - before.conflicts) as f64
                / (after.attempts - before.attempts).max(1) as f64;
            let (a, b) = (median(a), median(b));
            println!(
                "{keys:>5}  {tasks:>5}  {a:>14.0}  {b:>16.0}  {:>5.1}%  {:>22.1}%  {:>4.1}%",
                a / b * 100.0,
                ours_conflicts * 100.0,
                median(raw_conflicts) * 100.0
            );
        }
    }
}
