//! The NATS JetStream KV engine against real servers: Debian's 2.9 (`NATS_URL`,
//! default 127.0.0.1:4222) and a current release (`NATS_CURRENT_URL`, default
//! 127.0.0.1:4223), with several OS processes.

use crate::scenarios::{self, port_open, Target};
use crate::support::*;
use ratesync::config::StoreConfig;
use ratesync::engine::nats::NatsEngine;
use ratesync::{LimiterConfig, Registry};
use std::sync::Arc;
use std::time::Duration;

fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_string())
}

fn current_url() -> String {
    std::env::var("NATS_CURRENT_URL").unwrap_or_else(|_| "nats://127.0.0.1:4223".to_string())
}

/// Keys are namespaced by prefix in one bucket the suite shares.
fn store_at(url: &str, prefix: &str) -> String {
    format!(
        "[stores.s]\nengine = \"nats\"\nurl = \"{url}\"\nbucket = \"ratesync_it\"\nkey_prefix = \"{prefix}\"\n"
    )
}

fn store(prefix: &str) -> String {
    store_at(&nats_url(), prefix)
}

fn store_current(prefix: &str) -> String {
    store_at(&current_url(), prefix)
}

const NATS: Target = Target {
    label: "nats 2.9",
    store,
};

const NATS_CURRENT: Target = Target {
    label: "nats current",
    store: store_current,
};

macro_rules! require {
    ($url:expr) => {
        if !service_up("NATS with JetStream", &$url, 4222) {
            return;
        }
    };
}

#[test]
fn token_bucket_four_processes_never_over_admit() {
    require!(nats_url());
    let _serial = serial();
    scenarios::token_bucket_four_processes(&NATS);
}

#[test]
fn token_bucket_on_the_current_server_too() {
    require!(current_url());
    let _serial = serial();
    scenarios::token_bucket_four_processes(&NATS_CURRENT);
}

#[test]
fn rate_sweep_admits_the_limit_and_no_more() {
    require!(nats_url());
    let _serial = serial();
    // One hot key takes one compare-and-set round trip per decision per
    // process; 4 processes on this machine's 2 cores top out near 2,700/s
    // (README: NATS engine), and near 1,200/s with one core taken by other
    // work; accuracy is checked up to 150/s, far below either, and the rest
    // for over-admission only (throughput is `ratesync bench`'s).
    scenarios::rate_sweep(&NATS, &[5.0, 50.0, 150.0, 1_000.0, 10_000.0], 150.0);
}

#[test]
fn sliding_window_four_processes_never_exceed_the_limit() {
    require!(nats_url());
    let _serial = serial();
    scenarios::sliding_window(&NATS);
}

#[test]
fn concurrency_cap_holds_across_processes() {
    require!(nats_url());
    let _serial = serial();
    scenarios::concurrency_cap(&NATS);
}

#[test]
fn slots_of_a_killed_holder_come_back_after_the_lease() {
    require!(nats_url());
    let _serial = serial();
    scenarios::killed_holder(&NATS);
}

#[test]
fn a_release_wakes_a_waiter_at_once() {
    require!(nats_url());
    let _serial = serial();
    scenarios::release_wakes_waiter(&NATS);
}

#[test]
fn refused_requests_leave_no_slot() {
    require!(nats_url());
    let _serial = serial();
    scenarios::refused_requests_leave_no_slot(&NATS);
}

#[test]
fn odd_keys_work_and_stay_distinct() {
    require!(nats_url());
    let _serial = serial();
    let prefix = unique_prefix("keys");
    let n = scenarios::odd_keys(&NATS, &prefix);
    // Every stored key is in KV's alphabet, one rate key per caller key
    // (beside them the engine's clock-probe key).
    let stored: Vec<String> = tokio::runtime::Runtime::new().unwrap().block_on(async {
        use futures_util::StreamExt;
        let client = async_nats::connect(nats_url()).await.unwrap();
        let kv = async_nats::jetstream::new(client)
            .get_key_value("ratesync_it")
            .await
            .unwrap();
        let keys = kv.keys().await.unwrap();
        keys.filter_map(|k| async move { k.ok() })
            .filter(|k| std::future::ready(k.starts_with(&format!("{prefix}.r."))))
            .collect()
            .await
    });
    assert_eq!(stored.len(), n, "one KV key per caller key: {stored:?}");
    for k in &stored {
        assert!(
            k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-/_=.".contains(&b)),
            "a stored key outside KV's alphabet: {k}"
        );
    }
    println!("nats odd keys: {n} keys, each with its own state and a key in KV's alphabet");
}

#[test]
fn long_keys_keep_their_limit_on_both_servers() {
    for (target, url) in [(&NATS, nats_url()), (&NATS_CURRENT, current_url())] {
        require!(url);
        let _serial = serial();
        let n = scenarios::long_keys_keep_their_limit(target);
        println!(
            "{}: {n} keys of 3 KB to 1 MiB kept their limit",
            target.label
        );
    }
}

#[test]
fn nats_engine_keeps_the_contract_on_both_servers() {
    for (target, url) in [(&NATS, nats_url()), (&NATS_CURRENT, current_url())] {
        require!(url);
        let _serial = serial();
        scenarios::contract(target);
    }
}

/// Two processes whose clocks are 2 s fast and 2 s slow share one limit:
/// judged on the true (local, unshifted) time at which each grant was
/// used, nothing is over-admitted.
#[test]
fn skewed_host_clocks_do_not_widen_the_limit() {
    require!(nats_url());
    let _serial = serial();
    let (rate, burst, secs) = (200.0, 10u32, 5.0);
    let prefix = unique_prefix("skew");
    let dir = scratch("skew");
    let start = start_soon();
    let mut workers = Vec::new();
    for (i, shift) in [2_000i64, -2_000].into_iter().enumerate() {
        let sub = dir.join(format!("w{i}"));
        std::fs::create_dir_all(&sub).unwrap();
        let config = write_config(
            &sub,
            &format!(
                "{}clock_offset_ms = {shift}\n[limiters.api]\nstore = \"s\"\nrate_per_second = {rate}\nburst = {burst}\n",
                store(&prefix)
            ),
        );
        workers.extend(spawn_workers(
            &config,
            &sub,
            1,
            &WorkerOpts::new("api", 16, secs),
            start,
        ));
    }
    let (grants, _) = collect(workers);
    let by_slot = check_bucket(&grants, rate, burst, secs);
    // The true time a grant was used: when acquire returned, on this host's
    // real clock. Scheduling can only delay a return, which may bunch two
    // grants together, so 25 ms of jitter (5 tokens at 200/s) is allowed:
    // with one core kept busy, 5 ms was exceeded (11.035 of 10 + 1); the
    // skews under test are 2 s, 400 tokens.
    let as_used: Vec<Grant> = grants
        .iter()
        .map(|g| Grant {
            slot_us: g.held_from_us,
            ..*g
        })
        .collect();
    let by_use = check_bucket(&as_used, rate, burst, secs);
    let jitter = rate * 0.025;
    println!(
        "nats clocks skewed +2 s and -2 s, 2 procs x 16 tasks, {rate}/s burst {burst}, {secs} s: {} grants, \
         max over any interval {:.3} by slot, {:.3} by true time of use (allowed {burst} + {jitter:.0} jitter), utilisation {:.1}%",
        by_slot.grants,
        by_slot.max_over,
        by_use.max_over,
        by_slot.utilisation * 100.0
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        by_slot.max_over <= f64::from(burst) + 1e-6,
        "over-admission by slot time"
    );
    assert!(
        by_use.max_over <= f64::from(burst) + jitter,
        "over-admission in true time: {}",
        by_use.max_over
    );
    assert!(
        by_slot.utilisation >= 0.9,
        "utilisation {:.1}%",
        by_slot.utilisation * 100.0
    );
}

/// Eight engines (as eight processes would) on one key: conflicts happen, each
/// is counted once in `cas_failures`, and nothing is over-admitted.
#[test]
fn contention_counts_every_conflict() {
    require!(nats_url());
    let _serial = serial();
    let prefix = unique_prefix("contention");
    let (rate, burst, secs) = (500.0, 5u32, 3.0);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut engines = Vec::new();
        let mut limiters = Vec::new();
        for _ in 0..8 {
            let cfg: StoreConfig = toml::from_str(&format!(
                "engine = \"nats\"\nurl = \"{}\"\nbucket = \"ratesync_it\"\nkey_prefix = \"{prefix}\"",
                nats_url()
            ))
            .unwrap();
            let engine = Arc::new(NatsEngine::connect("s", &cfg).await.unwrap());
            let reg = Registry::new();
            reg.add_store("s", engine.clone());
            let lim = reg
                .register("api", LimiterConfig::token_bucket(rate, burst).with_store("s"))
                .unwrap();
            engines.push(engine);
            limiters.push(lim);
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(secs);
        let tasks: Vec<_> = limiters
            .iter()
            .cloned()
            .map(|lim| {
                tokio::spawn(async move {
                    let (mut slots, mut exhausted) = (Vec::new(), 0u64);
                    while tokio::time::Instant::now() < deadline {
                        let Ok(r) = tokio::time::timeout_at(deadline, lim.acquire()).await else {
                            break;
                        };
                        match r {
                            Ok(p) => slots.push(p.slot_unix_us().unwrap()),
                            // On a loaded host a decision can lose every one
                            // of its retries; it is denied (fail_closed),
                            // which is what this limiter is configured to do.
                            Err(ratesync::Error::Backend { source, .. }) if source.cas_exhausted => {
                                exhausted += 1
                            }
                            Err(e) => panic!("acquire failed: {e}"),
                        }
                    }
                    (slots, exhausted)
                })
            })
            .collect();
        let (mut grants, mut exhausted) = (Vec::new(), 0u64);
        for t in tasks {
            let (slots, lost) = t.await.unwrap();
            exhausted += lost;
            for slot_us in slots {
                grants.push(Grant {
                    worker: 0,
                    slot_us,
                    held_from_us: 0,
                    held_to_us: 0,
                    holders: 0,
                });
            }
        }
        let r = check_bucket(&grants, rate, burst, secs);
        let counted: u64 = limiters.iter().map(|l| l.metrics().cas_failures).sum();
        let counts: Vec<_> = engines.iter().map(|e| e.cas_counts()).collect();
        let observed: u64 = counts.iter().map(|c| c.conflicts).sum();
        let attempts: u64 = counts.iter().map(|c| c.attempts).sum();
        let writes: u64 = counts.iter().map(|c| c.writes).sum();
        println!(
            "nats contention, 8 engines on one key, {rate}/s burst {burst}, {secs} s: {} grants, max over {:.3} (allowed {burst}), \
             {attempts} CAS attempts, {observed} conflicts ({:.0}%), cas_failures counted {counted}, \
             {exhausted} decisions out of retries (max_cas_retries {})",
            r.grants,
            r.max_over,
            observed as f64 / attempts.max(1) as f64 * 100.0,
            ratesync::config::store::DEFAULT_MAX_CAS_RETRIES
        );
        assert!(
            r.max_over <= f64::from(burst) + rate * 1e-6 + 1e-9,
            "over-admission under contention"
        );
        assert!(observed > 0, "eight writers on one key never conflicted");
        assert_eq!(counted, observed, "cas_failures must count each conflict once");
        // Every answered attempt is a write or a conflict; the deadline may
        // cancel at most one update in flight per task (8), whose answer
        // never arrives.
        assert!(
            (writes + observed..=writes + observed + 8).contains(&attempts),
            "attempts {attempts}, writes {writes}, conflicts {observed}"
        );
        // The point here is the conflict count; utilisation only shows the
        // retries still serve the limit. Alone it is 90-99%; CI with its
        // other core busy measured 83.9%, so the floor is 50%.
        assert!(r.utilisation >= 0.5, "utilisation {:.1}%", r.utilisation * 100.0);
    });
}

/// Debian's nats-server on 4222, as CI starts it;
/// override with `RATESYNC_NATS_STOP` / `RATESYNC_NATS_START`.
const NATS_STOP: &str = "start-stop-daemon --stop --oknodo --retry 10 --exec /usr/sbin/nats-server";
const NATS_START: &str = "mkdir -p /var/lib/nats-server && start-stop-daemon --start --oknodo --background \
     --exec /usr/sbin/nats-server -- -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log";

#[test]
fn nats_restart_mid_run_follows_the_failure_mode_and_recovers() {
    require!(nats_url());
    let url = nats_url();
    let custom = std::env::var("RATESYNC_NATS_START").is_ok();
    if !url.contains("127.0.0.1:4222")
        || (!custom && !std::path::Path::new("/usr/sbin/nats-server").exists())
    {
        let msg = format!("cannot restart NATS at {url} from here (needs /usr/sbin/nats-server or $RATESYNC_NATS_START/STOP)");
        assert!(!services_required() || !url.contains("127.0.0.1"), "{msg}");
        skip_notice(&msg);
        return;
    }
    let _serial = serial();
    let stop = || {
        sh(&std::env::var("RATESYNC_NATS_STOP").unwrap_or_else(|_| NATS_STOP.to_string()));
    };
    let start = || {
        sh(&std::env::var("RATESYNC_NATS_START").unwrap_or_else(|_| NATS_START.to_string()));
    };
    scenarios::restart(&NATS, &stop, &start, &|| port_open(4222));
}

#[test]
fn many_hosts_share_one_limit() {
    require!(nats_url());
    let _serial = serial();
    let engine = crate::cross_host::Engine {
        label: "nats 2.9",
        store,
        serves_slow_hosts: false,
    };
    crate::cross_host::token_bucket(&engine);
    crate::cross_host::concurrency_with_killed_host(&engine);
}

/// A bucket of its own, so its max age is this test's.
fn own_bucket(url: &str, bucket: &str, max_age: u32) -> String {
    format!(
        "[stores.s]\nengine = \"nats\"\nurl = \"{url}\"\nbucket = \"{bucket}\"\nmax_age_seconds = {max_age}\nkey_prefix = \"{}\"\n",
        unique_prefix("horizon")
    )
}

/// Waiting callers reserve slots ahead; a bucket that forgot the key before
/// those slots passed would admit them twice. At 0.5/s with a 3 s max age,
/// five waiters and a late `try_acquire` stay within the token bucket.
#[test]
fn reservations_never_outlive_the_bucket() {
    require!(nats_url());
    let _serial = serial();
    let bucket = format!("rs_horizon_{}_{}", std::process::id(), now_us() % 1_000_000);
    let toml = format!(
        "{}[limiters.api]\nstore = \"s\"\nrate_per_second = 0.5\nburst = 1\n",
        own_bucket(&nats_url(), &bucket, 3)
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let slots = rt.block_on(async {
        let reg = Registry::from_toml_str(&toml).await.unwrap();
        let api = reg.limiter("api").unwrap();
        let t0 = std::time::Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..5 {
            let api = api.clone();
            tasks.push(tokio::spawn(async move {
                let _permit = api.acquire_timeout(Duration::from_secs(30)).await.unwrap();
                now_us()
            }));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut slots = Vec::new();
        // A late caller on another host (an engine of its own, whose cache
        // knows nothing) that will not wait, while the waiters' slots lie ahead.
        let other = Registry::from_toml_str(&toml).await.unwrap();
        tokio::time::sleep_until(tokio::time::Instant::from_std(
            t0 + Duration::from_millis(5_100),
        ))
        .await;
        let late = other.limiter("api").unwrap();
        if late.try_acquire().await.unwrap().is_some() {
            slots.push(now_us());
        }
        for t in tasks {
            slots.push(t.await.unwrap());
        }
        slots.sort_unstable();
        reg.close().await;
        other.close().await;
        slots
    });
    delete_bucket(&bucket);
    // 5 ms of jitter per grant: timers wake late, never early.
    let excess = ratesync::audit::max_excess(&slots, 0.5);
    assert!(
        excess <= 1.0 + 0.5 * 0.005 * slots.len() as f64,
        "grants {slots:?} exceed the bucket by {excess:.3} (bound 1)"
    );
    println!(
        "nats horizon: {} grants, worst excess {excess:.3} of burst 1",
        slots.len()
    );
}

/// An existing bucket that keeps keys for less than `max_age_seconds` is
/// raised to it when a store opens it.
#[test]
fn an_existing_bucket_is_raised_to_max_age() {
    require!(nats_url());
    let _serial = serial();
    let bucket = format!("rs_age_{}_{}", std::process::id(), now_us() % 1_000_000);
    let limiters = "[limiters.api]\nstore = \"s\"\nrate_per_second = 1.0\n";
    let rt = tokio::runtime::Runtime::new().unwrap();
    let age = |bucket: String| async move {
        let client = async_nats::connect(nats_url()).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let mut stream = js.get_stream(format!("KV_{bucket}")).await.unwrap();
        stream.info().await.unwrap().config.max_age
    };
    rt.block_on(async {
        let short = Registry::from_toml_str(&format!(
            "{}{limiters}",
            own_bucket(&nats_url(), &bucket, 6)
        ))
        .await
        .unwrap();
        assert_eq!(age(bucket.clone()).await, Duration::from_secs(6));
        short.close().await;
        let long = Registry::from_toml_str(&format!(
            "{}{limiters}",
            own_bucket(&nats_url(), &bucket, 86_400)
        ))
        .await
        .unwrap();
        assert_eq!(
            age(bucket.clone()).await,
            Duration::from_secs(86_400),
            "a store with max_age_seconds = 86400 ran on a 6 s bucket"
        );
        // A shorter setting leaves the longer age alone.
        let again = Registry::from_toml_str(&format!(
            "{}{limiters}",
            own_bucket(&nats_url(), &bucket, 6)
        ))
        .await
        .unwrap();
        assert_eq!(age(bucket.clone()).await, Duration::from_secs(86_400));
        long.close().await;
        again.close().await;
    });
    delete_bucket(&bucket);
}

#[test]
fn an_acquire_dropped_mid_request_leaves_no_slot() {
    require!(nats_url());
    let _serial = serial();
    scenarios::cancelled_mid_request_leaves_no_slot(&NATS);
}

/// Deletes a bucket a test made for itself, so runs leave no streams behind.
fn delete_bucket(bucket: &str) {
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        if let Ok(client) = async_nats::connect(nats_url()).await {
            let _ = async_nats::jetstream::new(client)
                .delete_stream(format!("KV_{bucket}"))
                .await;
        }
    });
}

#[test]
fn a_permit_dropped_before_exit_is_released() {
    require!(nats_url());
    scenarios::a_permit_dropped_before_exit_is_released(&NATS);
}

#[test]
fn the_cli_checks_resets_and_holds() {
    require!(nats_url());
    scenarios::the_cli_checks_resets_and_holds(&NATS, "NATS ");
}

#[test]
fn coalesced_hot_key_holds() {
    require!(nats_url());
    let _serial = serial();
    scenarios::coalesced_hot_key_holds(&NATS);
}

#[test]
fn weighted_requests_keep_the_limit_in_tokens() {
    require!(nats_url());
    let _serial = serial();
    scenarios::weighted_requests_keep_the_limit_in_tokens(&NATS);
}

#[test]
fn policy_windows_hold_across_processes() {
    require!(nats_url());
    let _serial = serial();
    scenarios::policy_windows_hold_across_processes(&NATS);
}

#[test]
fn a_ban_holds_in_every_process() {
    require!(nats_url());
    let _serial = serial();
    scenarios::a_ban_holds_in_every_process(&NATS);
}

#[test]
fn list_changes_reach_other_processes_within_a_second() {
    require!(nats_url());
    let _serial = serial();
    scenarios::list_changes_reach_other_processes_within_a_second(&NATS);
}
