//! The NATS store's settings and the limits one KV value sets, checked at load.

use crate::config::store::{SettingError, StoreConfig};
use crate::duration::{seconds, Range};
use crate::policy::{PolicySpec, WindowAlgorithm};
use crate::quota::{LimiterSpec, RateSpec};
use crate::secret::redact;
use std::time::Duration;

/// NATS engine settings: a `nats://` or `tls://` url, a bucket and key
/// prefix that are valid NATS names, at least one CAS attempt, and a max age.
pub(crate) fn check_settings(store: &StoreConfig) -> Result<(), SettingError> {
    if let Some(t) = store.max_age_seconds {
        // A bucket forgets keys no sooner than a second.
        seconds(t, Range::at_least(1.0)).map_err(|m| ("max_age_seconds", m))?;
    }
    if let Some(b) = &store.bucket {
        if b.is_empty()
            || !b
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
        {
            return Err((
                "bucket",
                format!("may contain only letters, digits, _ and -, got {b:?}"),
            ));
        }
    }
    if store.max_cas_retries == Some(0) {
        return Err(("max_cas_retries", "must be >= 1, got 0".into()));
    }
    if let Some(p) = &store.key_prefix {
        if p.contains(':') || p.starts_with('.') || p.ends_with('.') || p.contains("..") {
            return Err((
                "key_prefix",
                format!("NATS keys cannot contain `:` or empty `.` tokens; use letters, digits and - _ . /, got {p:?}"),
            ));
        }
    }
    let url = store.required_url("url = \"nats://127.0.0.1:4222\"")?;
    if !["nats://", "tls://"].iter().any(|s| url.starts_with(s)) {
        return Err((
            "url",
            format!(
                "must start with nats:// or tls:// (TLS), got {:?}",
                redact(url)
            ),
        ));
    }
    Ok(())
}

/// The highest sliding-window limit: NATS keeps a window's grants in one KV
/// value (8 bytes each) under the server's 1 MiB payload limit.
pub const MAX_WINDOW_LIMIT: u32 = 100_000;

/// The most concurrency slots: NATS keeps a key's holders in one KV value
/// (about 40 bytes each).
pub const MAX_CONCURRENT: u32 = 20_000;

/// A NATS bucket forgets untouched keys after its max age, so it must keep
/// them as long as a limiter's state matters (or a forgotten bucket would
/// admit a burst), and a key's grants or holders must fit in one value.
pub(crate) fn check_limiter(spec: &LimiterSpec, store: &StoreConfig) -> Result<(), SettingError> {
    let needed = spec.state_lifetime();
    if needed > store.max_age() {
        return Err((
            "",
            format!(
                "its state matters for {:.0} s after each change, longer than store `{}` keeps an untouched key (max_age_seconds = {:.0}); raise max_age_seconds",
                needed.as_secs_f64().ceil(),
                spec.store,
                store.max_age().as_secs_f64()
            ),
        ));
    }
    if let Some(RateSpec::SlidingWindow(w)) = spec.rate {
        if w.limit() > MAX_WINDOW_LIMIT {
            return Err((
                "limit",
                format!(
                    "must be at most {MAX_WINDOW_LIMIT} with store `{}` (engine nats keeps a window's grants in one value under the 1 MiB payload limit), got {}; use a token bucket or another engine",
                    spec.store,
                    w.limit()
                ),
            ));
        }
    }
    if let Some(c) = spec.concurrency {
        if c.max > MAX_CONCURRENT {
            return Err((
                "max_concurrent",
                format!(
                    "must be at most {MAX_CONCURRENT} with store `{}` (engine nats keeps a key's holders in one value under the 1 MiB payload limit), got {}",
                    spec.store, c.max
                ),
            ));
        }
    }
    Ok(())
}

/// The most a policy key's value may hold, under the server's 1 MiB
/// payload limit with room for the entry's headers.
pub const MAX_POLICY_VALUE: usize = 900 * 1024;

/// A policy on a NATS store: its bans and windows must outlive no key the
/// bucket forgets (an untouched key vanishes after `max_age`, which would
/// lift a ban or empty a window early), and a key's windows must fit in
/// one value.
pub(crate) fn check_policy(spec: &PolicySpec, max_age: Duration) -> Result<(), String> {
    for (tier, rules) in
        std::iter::once((None, &spec.windows)).chain(spec.tiers.iter().map(|(t, r)| (Some(t), r)))
    {
        let at = tier.map_or(String::new(), |t| format!(" (tier {t})"));
        for r in rules {
            let lives = r.window.max(r.block);
            if lives > max_age {
                return Err(format!(
                    "window `{}`{at} keeps state for {:.0} s (its window or block_duration), longer than this NATS store keeps an untouched key (max_age_seconds = {:.0}); raise max_age_seconds",
                    r.name,
                    lives.as_secs_f64(),
                    max_age.as_secs_f64()
                ));
            }
        }
        let bytes: usize = rules
            .iter()
            .map(|r| match &r.algorithm {
                WindowAlgorithm::Rate(RateSpec::SlidingWindow(w)) => 5 + 8 * w.limit() as usize,
                WindowAlgorithm::Counted(c) => 13 + 4 * c.span() as usize,
                WindowAlgorithm::Rate(RateSpec::TokenBucket(_)) => 9,
            })
            .sum();
        if bytes > MAX_POLICY_VALUE {
            return Err(format!(
                "its windows{at} keep up to {bytes} bytes per key, more than one NATS value holds ({MAX_POLICY_VALUE}); lower the exact sliding_window limits or use sliding_counter"
            ));
        }
    }
    Ok(())
}
