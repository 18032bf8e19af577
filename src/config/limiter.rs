//! A `[limiters.NAME]` table as written, and its validation into a [`LimiterSpec`].

use crate::duration::{seconds, Range};
use crate::error::ConfigError;
use crate::gcra::Gcra;
use crate::quota::{ConcurrencySpec, FailureMode, LimiterSpec, RateSpec};
use crate::window::SlidingWindow;
use serde::Deserialize;
use std::time::Duration;

/// The name of the in-memory store every registry has unless the
/// configuration defines a store of that name itself.
pub const DEFAULT_STORE: &str = "memory";

/// The default lease of a concurrency slot whose holder vanished.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// The highest token-bucket rate: one grant per nanosecond, the finest the
/// engines' clocks tell apart.
pub const MAX_RATE: f64 = 1e9;

/// The shortest lease any store accepts. A holder renews every third of its
/// lease; below a second, a descheduled process or a GC pause outlives the
/// lease and a second holder gets the slot while the first still works.
pub const MIN_LEASE: Duration = Duration::from_secs(1);

/// How a rate is limited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// Token bucket (GCRA): `rate_per_second` with bursts up to `burst`.
    #[default]
    #[serde(alias = "gcra")]
    TokenBucket,
    /// Exact sliding window: never more than `limit` in any `window_seconds`.
    SlidingWindow,
}

/// A `[limiters.NAME]` table as written, before validation.
///
/// Also the way to register a limiter from code: fill in the fields and pass
/// it to [`Registry::register`](crate::Registry::register), which validates it
/// exactly like a file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimiterConfig {
    /// The store holding this limiter's state (default: the built-in `memory`).
    pub store: Option<String>,
    /// `token_bucket` (default) or `sliding_window`.
    pub algorithm: Option<Algorithm>,
    /// Token bucket: tokens per second.
    pub rate_per_second: Option<f64>,
    /// Token bucket: the largest burst (default 1).
    pub burst: Option<i64>,
    /// Sliding window: grants allowed in any window.
    pub limit: Option<i64>,
    /// Sliding window: the window's length in seconds.
    pub window_seconds: Option<f64>,
    /// Concurrency slots (optional; may be combined with a rate).
    pub max_concurrent: Option<i64>,
    /// Seconds after which the slot of a vanished holder is freed (default 30).
    pub lease_seconds: Option<f64>,
    /// Default bound for `acquire()` in seconds; absent = wait forever.
    pub timeout: Option<f64>,
    /// `fail_closed` (default) or `fail_open`.
    pub on_backend_error: Option<FailureMode>,
}

impl LimiterConfig {
    /// A token bucket of `rate_per_second` with bursts up to `burst`.
    pub fn token_bucket(rate_per_second: f64, burst: u32) -> Self {
        Self {
            rate_per_second: Some(rate_per_second),
            burst: Some(i64::from(burst)),
            ..Self::default()
        }
    }

    /// An exact sliding window of `limit` grants per `window`.
    pub fn sliding_window(limit: u32, window: Duration) -> Self {
        Self {
            algorithm: Some(Algorithm::SlidingWindow),
            limit: Some(i64::from(limit)),
            window_seconds: Some(window.as_secs_f64()),
            ..Self::default()
        }
    }

    /// A pure concurrency limiter of `max` slots.
    pub fn concurrency(max: u32) -> Self {
        Self {
            max_concurrent: Some(i64::from(max)),
            ..Self::default()
        }
    }

    /// Adds a concurrency cap of `max` slots.
    pub fn with_max_concurrent(mut self, max: u32) -> Self {
        self.max_concurrent = Some(i64::from(max));
        self
    }

    /// Sets the default bound of `acquire()`.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout.as_secs_f64());
        self
    }

    /// Sets the store.
    pub fn with_store(mut self, store: impl Into<String>) -> Self {
        self.store = Some(store.into());
        self
    }

    /// Sets the failure mode.
    pub fn with_failure_mode(mut self, mode: FailureMode) -> Self {
        self.on_backend_error = Some(mode);
        self
    }

    /// Sets the lease of concurrency slots.
    pub fn with_lease(mut self, lease: Duration) -> Self {
        self.lease_seconds = Some(lease.as_secs_f64());
        self
    }
}

pub(crate) fn validate_limiter(
    source: &str,
    name: &str,
    lim: &LimiterConfig,
    store_exists: impl Fn(&str) -> bool,
    known_stores: &[String],
) -> Result<LimiterSpec, ConfigError> {
    let at = |key: &str| format!("limiters.{name}.{key}");
    let err = |key: &str, msg: String| ConfigError::new(source, at(key), msg);
    let algorithm = lim.algorithm.unwrap_or_default();

    let store = lim
        .store
        .clone()
        .unwrap_or_else(|| DEFAULT_STORE.to_string());
    if !store_exists(&store) {
        let mut known: Vec<&str> = known_stores.iter().map(String::as_str).collect();
        if !known.contains(&DEFAULT_STORE) {
            known.insert(0, DEFAULT_STORE);
        }
        return Err(err(
            "store",
            format!(
                "no store named `{store}`; define [stores.{store}] or use one of: {}",
                known.join(", ")
            ),
        ));
    }

    let rate = match algorithm {
        Algorithm::TokenBucket => {
            for (key, set) in [
                ("limit", lim.limit.is_some()),
                ("window_seconds", lim.window_seconds.is_some()),
            ] {
                if set {
                    return Err(err(key, "belongs to a sliding window; add algorithm = \"sliding_window\" or use rate_per_second".into()));
                }
            }
            match lim.rate_per_second {
                None => {
                    if lim.burst.is_some() {
                        return Err(err("burst", "needs rate_per_second".into()));
                    }
                    None
                }
                Some(rate) => {
                    if !(rate.is_finite() && rate > 0.0) {
                        return Err(err(
                            "rate_per_second",
                            format!("must be a positive number, got {rate}"),
                        ));
                    }
                    let burst = count(lim.burst.unwrap_or(1)).map_err(|m| err("burst", m))?;
                    if rate > MAX_RATE {
                        return Err(err(
                            "rate_per_second",
                            format!("must be at most {MAX_RATE:e} (one grant per nanosecond), got {rate}"),
                        ));
                    }
                    let refill = f64::from(burst) / rate;
                    if refill > crate::duration::MAX_SECONDS {
                        return Err(err(
                            "burst",
                            format!(
                                "with rate_per_second = {rate}, the bucket takes {refill:.3e} s to refill; burst / rate_per_second must be at most {} s (10 years): lower burst or raise the rate",
                                crate::duration::MAX_SECONDS
                            ),
                        ));
                    }
                    let gcra = Gcra::new(rate, burst)
                        .ok_or_else(|| err("rate_per_second", format!("cannot be used: {rate}")))?;
                    Some(RateSpec::TokenBucket(gcra))
                }
            }
        }
        Algorithm::SlidingWindow => {
            for (key, set) in [
                ("rate_per_second", lim.rate_per_second.is_some()),
                ("burst", lim.burst.is_some()),
            ] {
                if set {
                    return Err(err(key, "belongs to a token bucket; remove it or drop algorithm = \"sliding_window\"".into()));
                }
            }
            let limit = lim
                .limit
                .ok_or_else(|| err("limit", "is required for a sliding window".into()))?;
            let limit = count(limit).map_err(|m| err("limit", m))?;
            let window = lim
                .window_seconds
                .ok_or_else(|| err("window_seconds", "is required for a sliding window".into()))?;
            let window = seconds(window, Range::POSITIVE).map_err(|m| err("window_seconds", m))?;
            let w = SlidingWindow::new(limit, crate::units::nanos(window)).ok_or_else(|| {
                err(
                    "window_seconds",
                    format!("must be at least 1 ns, got {window:?}"),
                )
            })?;
            Some(RateSpec::SlidingWindow(w))
        }
    };

    let concurrency = match lim.max_concurrent {
        None => {
            if lim.lease_seconds.is_some() {
                return Err(err("lease_seconds", "needs max_concurrent".into()));
            }
            None
        }
        Some(max) => {
            let max = count(max).map_err(|m| err("max_concurrent", m))?;
            let lease = match lim.lease_seconds {
                None => DEFAULT_LEASE,
                // Any positive value here; the minimum below explains itself.
                Some(s) => seconds(s, Range::at_least(f64::MIN_POSITIVE))
                    .map_err(|m| err("lease_seconds", m))?,
            };
            if lease < MIN_LEASE {
                return Err(err(
                    "lease_seconds",
                    format!(
                        "must be at least {} s, got {}: a shorter lease runs out under a holder that is merely slow, and a second holder gets its slot",
                        MIN_LEASE.as_secs_f64(),
                        lim.lease_seconds.unwrap_or_default()
                    ),
                ));
            }
            Some(ConcurrencySpec { max, lease })
        }
    };

    if rate.is_none() && concurrency.is_none() {
        return Err(ConfigError::new(
            source,
            format!("limiters.{name}"),
            "limits nothing: set rate_per_second, a sliding window (algorithm = \"sliding_window\", limit, window_seconds), or max_concurrent",
        ));
    }

    let timeout = match lim.timeout {
        None => None,
        Some(t) => Some(seconds(t, Range::ZERO_OR_MORE).map_err(|m| err("timeout", m))?),
    };

    Ok(LimiterSpec {
        store,
        rate,
        concurrency,
        timeout,
        on_backend_error: lim.on_backend_error.unwrap_or_default(),
    })
}

/// Validates a limiter for programmatic registration (see [`Registry::register`](crate::Registry::register)).
pub(crate) fn validate_registered(
    name: &str,
    lim: &LimiterConfig,
    store_exists: impl Fn(&str) -> bool,
    known_stores: &[String],
) -> Result<LimiterSpec, ConfigError> {
    validate_limiter("<registered>", name, lim, store_exists, known_stores)
}

/// A count of grants or slots: a whole number from 1 to `u32::MAX`, or the
/// message saying which bound it broke.
fn count(value: i64) -> Result<u32, String> {
    if value < 1 {
        return Err(format!("must be >= 1, got {value}"));
    }
    u32::try_from(value).map_err(|_| format!("must be <= {}, got {value}", u32::MAX))
}
