//! The validated limits: what a limiter enforces, in the engines' own terms.
//!
//! A [`LimiterSpec`] is what the configuration (or [`Registry::register`](crate::Registry::register))
//! produces from a `[limiters.NAME]` table once every value has been checked;
//! the engines and [`Limiter`](crate::Limiter) speak only this vocabulary,
//! never TOML. (governor calls its equivalent a `Quota`.)

use crate::gcra::{self, Gcra};
use crate::window::{self, SlidingWindow};
use serde::Deserialize;
use std::collections::VecDeque;
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

/// One key's rate state, as the engines that decide in Rust (memory, NATS)
/// keep it: a bucket's theoretical arrival time, or a window's grant times
/// (ns on the engine's clock).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RateCell {
    /// Token bucket: the theoretical arrival time, if the key has one.
    pub tat: Option<u64>,
    /// Sliding window: the grants still in (or ahead of) the window.
    pub grants: VecDeque<u64>,
}

impl RateSpec {
    /// The one rate decision every Rust-side engine makes (governor's
    /// `measure_and_replace`): reads `cell` at `now` and either grants
    /// `cost` tokens (or window grants) at a slot `Ok(wait_ns)` from now, no
    /// later than `max_wait_ns`, replacing the cell with the state after the
    /// grant (when `commit`), or refuses with `Err(retry_after_ns)`, leaving
    /// the cell as it was (a window trimmed of grants that have left it). A
    /// cost above the capacity is always refused.
    pub fn measure_and_replace(
        &self,
        cell: &mut RateCell,
        now: u64,
        cost: u32,
        max_wait_ns: u64,
        commit: bool,
    ) -> Result<u64, u64> {
        match self {
            RateSpec::TokenBucket(g) => match g.decide(cell.tat, now, cost, max_wait_ns) {
                gcra::Decision::Granted { wait_ns, new_tat } => {
                    if commit {
                        cell.tat = Some(new_tat);
                    }
                    Ok(wait_ns)
                }
                gcra::Decision::Denied { retry_after_ns } => Err(retry_after_ns),
            },
            RateSpec::SlidingWindow(w) => {
                w.trim(&mut cell.grants, now);
                match w.decide_n(&cell.grants, now, cost, max_wait_ns) {
                    window::Decision::Granted { wait_ns } => {
                        if commit {
                            w.record_n(&mut cell.grants, now, cost, wait_ns);
                        }
                        Ok(wait_ns)
                    }
                    window::Decision::Denied { retry_after_ns } => Err(retry_after_ns),
                }
            }
        }
    }

    /// The most a single request may cost: the burst of a bucket, the limit
    /// of a window. A weighted request above it can never be granted.
    pub fn capacity(&self) -> u32 {
        match self {
            RateSpec::TokenBucket(g) => g.burst(),
            RateSpec::SlidingWindow(w) => w.limit(),
        }
    }

    /// Stores a grant that starts at `at` (>= `now`), no earlier than
    /// [`measure_and_replace`](Self::measure_and_replace) allowed: the
    /// bucket charged as if the request arrived at `at`, the window with the
    /// grant at `at`.
    pub fn record_at(&self, cell: &mut RateCell, now: u64, at: u64) {
        match self {
            RateSpec::TokenBucket(g) => {
                if let gcra::Decision::Granted { new_tat, .. } = g.decide(cell.tat, at, 1, u64::MAX)
                {
                    cell.tat = Some(new_tat);
                }
            }
            RateSpec::SlidingWindow(w) => {
                w.trim(&mut cell.grants, now);
                w.record(&mut cell.grants, now, at.saturating_sub(now));
            }
        }
    }

    /// How long after `now` the cell still holds something: past it the key
    /// is a full bucket or an empty window and may be forgotten.
    pub fn idle_after_ns(&self, cell: &RateCell, now: u64) -> u64 {
        match self {
            RateSpec::TokenBucket(g) => cell.tat.map_or(0, |t| g.idle_after_ns(t, now)),
            RateSpec::SlidingWindow(w) => w.idle_after_ns(&cell.grants, now),
        }
    }
}
