//! try_acquire on the in-memory engine: one key and 10,000 keys, from one
//! task and from two OS threads, beside `governor` (the in-process Rust
//! reference) on the same quota in the same run. Run with
//! `cargo bench --bench memory`.
//!
//! The limit is set far above the offered load so every call takes the grant
//! path (a decision that stores new state), the more expensive of the two.
//! governor is called as its users call it: `check()` on a direct limiter,
//! `check_key(&key)` on a keyed one (hashing the key each call); ratesync's
//! per-key limiters are derived once (`limiter.key(k)`), as a server keeps
//! them for its clients, and each `try_acquire` still hashes the key to its
//! shard and takes the shard's lock.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use governor::clock::{Clock, DefaultClock, MonotonicClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use ratesync::{Limiter, LimiterConfig, Registry};
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

/// The same quota as `limiters`: one grant per nanosecond, a burst of 1e9.
fn quota() -> Quota {
    Quota::with_period(Duration::from_nanos(1))
        .expect("a non-zero period")
        .allow_burst(NonZeroU32::new(1_000_000_000).expect("non-zero"))
}

/// governor's limiters for one key (direct) and for many (keyed), kept
/// across samples as ratesync's are, on clock `C`.
struct Governor<C: Clock> {
    names: Vec<String>,
    direct: RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<C::Instant>>,
    keyed: RateLimiter<String, DashMapStateStore<String>, C, NoOpMiddleware<C::Instant>>,
}

impl<C: Clock + Clone + Sync> Governor<C> {
    fn new(keys: usize, clock: C) -> Self {
        Self {
            names: (0..keys).map(|i| format!("user:{i}")).collect(),
            direct: RateLimiter::direct_with_clock(quota(), clock.clone()),
            keyed: RateLimiter::dashmap_with_clock(quota(), clock),
        }
    }

    /// `iters` checks over `threads` OS threads (as `run`).
    fn run(&self, threads: usize, iters: u64) -> Duration {
        let per_thread = iters / threads as u64;
        let keys = self.names.len();
        let start = Instant::now();
        std::thread::scope(|s| {
            for t in 0..threads {
                s.spawn(move || {
                    for i in 0..per_thread {
                        let ok = if keys == 1 {
                            self.direct.check().is_ok()
                        } else {
                            let key = &self.names[(i as usize * 7919 + t * 4999) % keys];
                            self.keyed.check_key(key).is_ok()
                        };
                        assert!(ok);
                    }
                });
            }
        });
        start.elapsed()
    }
}

fn limiters(keys: usize) -> Vec<Limiter> {
    let reg = Registry::new();
    let lim = reg
        .register("bench", LimiterConfig::token_bucket(1e9, 1_000_000_000))
        .expect("valid limiter");
    if keys == 1 {
        vec![lim]
    } else {
        (0..keys).map(|i| lim.key(format!("user:{i}"))).collect()
    }
}

/// Runs `iters` try_acquire calls spread over `threads` OS threads, each on
/// its own single-threaded runtime, and returns the wall time.
fn run(limiters: &[Limiter], threads: usize, iters: u64) -> Duration {
    let per_thread = iters / threads as u64;
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            s.spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                    .expect("runtime");
                rt.block_on(async {
                    let n = limiters.len();
                    for i in 0..per_thread {
                        let lim = &limiters[(i as usize * 7919 + t * 4999) % n];
                        let p = lim.try_acquire().await.expect("memory engine never fails");
                        assert!(p.is_some());
                    }
                });
            });
        }
    });
    start.elapsed()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("memory_try_acquire");
    g.throughput(Throughput::Elements(1));
    for keys in [1usize, 10_000] {
        let lims = limiters(keys);
        for threads in [1usize, 2] {
            g.bench_with_input(
                BenchmarkId::new(format!("{keys}_keys"), format!("{threads}_threads")),
                &threads,
                |b, &threads| b.iter_custom(|iters| run(&lims, threads, iters.max(threads as u64))),
            );
        }
    }
    g.finish();
    // governor as its users get it (its default clock, quanta's TSC reading
    // of a few ns), and on the clock ratesync reads (std's monotonic
    // `Instant`, a vDSO clock_gettime of ~20 ns here, which tokio's paused
    // time in tests builds on): the difference is the clock's share.
    governor_group(c, "governor_check", DefaultClock::default);
    governor_group(c, "governor_check_std_clock", MonotonicClock::default);
}

fn governor_group<C: Clock + Clone + Sync>(c: &mut Criterion, name: &str, clock: fn() -> C) {
    let mut g = c.benchmark_group(name);
    g.throughput(Throughput::Elements(1));
    for keys in [1usize, 10_000] {
        let gov = Governor::new(keys, clock());
        for threads in [1usize, 2] {
            g.bench_with_input(
                BenchmarkId::new(format!("{keys}_keys"), format!("{threads}_threads")),
                &threads,
                |b, &threads| b.iter_custom(|iters| gov.run(threads, iters.max(threads as u64))),
            );
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
