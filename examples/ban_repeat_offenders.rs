//! A violation hook that bans a key after 5 violations within a minute, on
//! every host sharing the policy's store. A client hammering a policy of 2
//! requests per second is throttled, then banned for 15 minutes; a polite
//! client is untouched. Run with `cargo run --example ban_repeat_offenders`.

use ratesync::policy::{Action, Request};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// Violations counted per key, at most this many keys (the oldest go first):
/// the keys are the clients', so the map must not grow without bound.
const KEYS_TRACKED: usize = 10_000;
const VIOLATIONS: usize = 5;
const WITHIN: Duration = Duration::from_secs(60);
const BAN: Duration = Duration::from_secs(15 * 60);

#[tokio::main]
async fn main() -> ratesync::Result<()> {
    let registry = ratesync::Registry::from_toml_str(
        "[policies.api]\nkey = \"api_key\"\nwindows = [{ window = \"1s\", limit = 2 }]",
    )
    .await?;
    let api = registry.policy("api")?;
    let seen: Arc<Mutex<HashMap<String, VecDeque<SystemTime>>>> = Arc::default();
    let policy = api.clone();
    api.on_violation(move |v| {
        let (seen, policy) = (seen.clone(), policy.clone());
        async move {
            let ban_now = {
                let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
                if seen.len() >= KEYS_TRACKED && !seen.contains_key(&v.key) {
                    seen.clear();
                }
                let times = seen.entry(v.key.clone()).or_default();
                times.push_back(v.at);
                while times
                    .front()
                    .is_some_and(|t| v.at.duration_since(*t).unwrap_or_default() > WITHIN)
                {
                    times.pop_front();
                }
                // Ban once: the violations queued behind this one start afresh.
                let ban = times.len() >= VIOLATIONS;
                if ban {
                    times.clear();
                }
                ban
            };
            if ban_now {
                match policy
                    .block_key(&v.state_key, BAN, "5 violations within a minute")
                    .await
                {
                    Ok(_) => println!("hook: banned {} for {} min", v.key, BAN.as_secs() / 60),
                    Err(e) => eprintln!("hook: could not ban {}: {e}", v.key),
                }
            }
        }
    });
    let greedy = Request::new().api_key("greedy");
    let polite = Request::new().api_key("polite");
    for _ in 0..8 {
        api.check(&greedy).await?;
    }
    // The hook runs on its own task; give it a moment.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let d = api.check(&greedy).await?;
    println!(
        "greedy: {} (retry after {:?})",
        d.action.as_str(),
        d.retry_after.unwrap_or_default()
    );
    assert_eq!(d.action, Action::Block);
    let d = api.check(&polite).await?;
    println!("polite: {}", d.action.as_str());
    assert!(d.allowed);
    let m = api.metrics();
    println!(
        "requests {}  refused {}  violations {}  bans {}",
        m.total_requests, m.blocked_requests, m.total_violations, m.bans_started
    );
    Ok(())
}
