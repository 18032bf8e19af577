//! Policy checks beside a single limiter on the same engine, in one run:
//! `policy.check` of a policy of three windows (a token bucket per second,
//! a sliding counter per minute, a fixed window per hour), and of a policy
//! of one token-bucket window (what the policy layer itself costs), against
//! `try_acquire` on one token-bucket limiter, all on 16 keys from 16
//! tasks and both deriving the key's state from the key on every call (a
//! policy from the request, the limiter by `limiter.key(k)`), as a server
//! does per request, alternating rounds so machine noise hits all alike; the table
//! gives the medians of the rounds and each policy's share of the limiter's
//! rate (the goal: at least 80%).
//!
//! Run with `cargo bench --bench policy`: the memory engine always, and
//! Redis (`REDIS_URL`), PostgreSQL (`DATABASE_URL`) and NATS (`NATS_URL`)
//! when this build has them and they answer. Limits are far above the
//! offered load, so every call is admitted (the path that writes state).

mod common;

use common::{listing_only, median, ROUNDS};
use ratesync::policy::{Policy, Request};
use ratesync::{Limiter, Registry};
use std::time::Instant;

const TASKS: usize = 16;
const KEYS: usize = 16;

fn stores() -> Vec<(&'static str, String, usize)> {
    let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_string());
    let mut v = vec![("memory", "engine = \"memory\"".to_string(), 400_000)];
    if cfg!(feature = "redis") {
        let url = env("REDIS_URL", "redis://127.0.0.1:6379");
        v.push((
            "redis",
            format!("engine = \"redis\"\nurl = \"{url}\"\nkey_prefix = \"bench-policy\""),
            40_000,
        ));
    }
    if cfg!(feature = "postgres") {
        let url = env("DATABASE_URL", "postgres://root@127.0.0.1:5432/test");
        v.push((
            "postgres",
            format!("engine = \"postgres\"\nurl = \"{url}\"\nschema = \"bench_policy\""),
            20_000,
        ));
    }
    if cfg!(feature = "nats") {
        let url = env("NATS_URL", "nats://127.0.0.1:4222");
        v.push((
            "nats",
            format!("engine = \"nats\"\nurl = \"{url}\"\nbucket = \"bench_policy\""),
            20_000,
        ));
    }
    v
}

async fn policy_rate(p: &Policy, calls: usize) -> f64 {
    common::policy_rate(p, TASKS, calls, |i| {
        Request::new().api_key(format!("k{}", i % KEYS))
    })
    .await
}

/// `calls` try_acquire over `TASKS` tasks, each deriving its per-key
/// limiter per call from the key (as a server does with the key of each
/// request, and as a policy check does).
async fn limiter_rate(l: &Limiter, calls: usize) -> f64 {
    let per_task = calls / TASKS;
    let start = Instant::now();
    let handles: Vec<_> = (0..TASKS)
        .map(|i| {
            let l = l.clone();
            let key = format!("k{}", i % KEYS);
            tokio::spawn(async move {
                for _ in 0..per_task {
                    let p = l.key(&key).try_acquire().await.expect("the store answers");
                    assert!(p.is_some(), "the bench limit was reached");
                }
            })
        })
        .collect();
    for h in handles {
        h.await.expect("bench task");
    }
    (per_task * TASKS) as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    if listing_only() {
        return;
    }
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    println!("engine    limiter try_acquire/s  policy, 1 window  share   policy, 3 windows  share   (checks/s, medians of {ROUNDS} rounds, {TASKS} tasks on {KEYS} keys)");
    for (engine, store, calls) in stores() {
        let toml = format!(
            "[stores.s]\n{store}\n\
             [limiters.single]\nstore = \"s\"\nrate_per_second = 1000000.0\nburst = 1000000000\n\
             [policies.three]\nstore = \"s\"\nkey = \"api_key\"\nwindows = [\n\
             {{ window = \"1s\", limit = 4000000000, algorithm = \"token_bucket\", name = \"second\" }},\n\
             {{ window = \"1m\", limit = 4000000000, algorithm = \"sliding_counter\", name = \"minute\" }},\n\
             {{ window = \"1h\", limit = 4000000000, algorithm = \"fixed_window\", name = \"hour\" }},\n]\n\
             [policies.one]\nstore = \"s\"\nkey = \"api_key\"\nwindows = [\n\
             {{ window = \"1s\", limit = 4000000000, algorithm = \"token_bucket\", name = \"second\" }},\n]\n"
        );
        let reg = match rt.block_on(Registry::from_toml_str(&toml)) {
            Ok(r) => r,
            Err(e) => {
                println!("{engine:<8}  skipped: {e}");
                continue;
            }
        };
        let (l, one, three) = (
            reg.limiter("single").expect("limiter"),
            reg.policy("one").expect("policy"),
            reg.policy("three").expect("policy"),
        );
        rt.block_on(limiter_rate(&l, calls / 10));
        rt.block_on(policy_rate(&one, calls / 10));
        rt.block_on(policy_rate(&three, calls / 10));
        let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            a.push(rt.block_on(limiter_rate(&l, calls)));
            b.push(rt.block_on(policy_rate(&one, calls)));
            c.push(rt.block_on(policy_rate(&three, calls)));
        }
        let (a, b, c) = (median(a), median(b), median(c));
        println!(
            "{engine:<8}  {a:>21.0}  {b:>16.0}  {:>5.1}%  {c:>17.0}  {:>5.1}%",
            b / a * 100.0,
            c / a * 100.0
        );
    }
}
