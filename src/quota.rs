//! The validated limits: what a limiter enforces, in the engines' own terms.
//!
//! A [`LimiterSpec`] is what the configuration (or [`Registry::register`](crate::Registry::register))
//! produces from a `[limiters.NAME]` table once every value has been checked;
//! the engines and [`Limiter`](crate::Limiter) speak only this vocabulary,
//! never TOML. (governor calls its equivalent a `Quota`.)

use crate::gcra::Gcra;
use crate::window::SlidingWindow;
use serde::Deserialize;
use std::time::Duration;

/// What a limiter does when its store fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    /// Deny with [`Error::Backend`](crate::Error::Backend).
    #[default]
    FailClosed,
    /// Admit, count the error and log it.
    FailOpen,
}

impl FailureMode {
    /// The name used in configuration files.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureMode::FailClosed => "fail_closed",
            FailureMode::FailOpen => "fail_open",
        }
    }
}

/// A rate policy, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RateSpec {
    /// Token bucket / GCRA.
    TokenBucket(Gcra),
    /// Exact sliding window.
    SlidingWindow(SlidingWindow),
}

impl RateSpec {
    /// How long the state of one grant matters after the slot it was
    /// reserved for: a bucket until it is full again, a window until the
    /// grant has left it.
    pub fn state_lifetime(&self) -> Duration {
        match self {
            RateSpec::TokenBucket(g) => {
                Duration::from_nanos(g.emission_ns().saturating_mul(u64::from(g.burst())))
            }
            RateSpec::SlidingWindow(w) => Duration::from_nanos(w.window_ns()),
        }
    }
}

/// A concurrency policy, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConcurrencySpec {
    /// Slots.
    pub max: u32,
    /// How long a slot outlives a holder that stopped renewing it.
    pub lease: Duration,
}

/// A limiter's validated policy.
#[derive(Debug, Clone, PartialEq)]
pub struct LimiterSpec {
    /// The store's name.
    pub store: String,
    /// The rate limit, if any.
    pub rate: Option<RateSpec>,
    /// The concurrency cap, if any.
    pub concurrency: Option<ConcurrencySpec>,
    /// Default bound of `acquire()`; `None` waits forever.
    pub timeout: Option<Duration>,
    /// What to do when the store fails.
    pub on_backend_error: FailureMode,
}

impl LimiterSpec {
    /// How long this limiter's state matters after its last change: a bucket
    /// until it is full again, a window until its last grant left it, a lease
    /// until it runs out.
    pub fn state_lifetime(&self) -> Duration {
        let rate = self.rate.map_or(Duration::ZERO, |r| r.state_lifetime());
        rate.max(self.concurrency.map_or(Duration::ZERO, |c| c.lease))
    }
}
