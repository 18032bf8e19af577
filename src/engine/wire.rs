//! What the Redis scripts and the PostgreSQL functions take and answer, in
//! one place for both engines. Both count whole microseconds on the
//! server's clock ([`crate::units`]).

// Without either engine only `RateArgs` and `script_args` are used.
#![cfg_attr(
    not(any(feature = "redis", feature = "postgres")),
    allow(dead_code, unused_imports)
)]

#[cfg(any(feature = "redis", feature = "postgres"))]
use super::PolicyOutcome;
use super::{BatchReservation, ConcurrencyState, LeaseOutcome, RateState, Reservation};
#[cfg(any(feature = "redis", feature = "postgres"))]
use crate::counter::Counts;
use crate::gcra::Gcra;
#[cfg(any(feature = "redis", feature = "postgres"))]
use crate::policy::decide::{self, WindowCell};
#[cfg(any(feature = "redis", feature = "postgres"))]
use crate::policy::rule::{WindowAction, WindowAlgorithm, WindowRule};
use crate::quota::RateSpec;
use crate::units::{from_micros, micros, micros_to_nanos, nanos_to_micros_up};
use crate::window::SlidingWindow;
use std::time::Duration;

/// A rate as the scripts and SQL functions take it. On the wire it is the
/// positional `(kind, p1, p2)` that `earliest` in `engines/redis/lib.lua`
/// and `engines/postgres/001_init.sql` documents in its header: kind 1 a
/// token bucket (p1 the emission interval in µs, p2 the burst), kind 2 a
/// sliding window (p1 the limit, p2 the window in µs). Intervals round up,
/// so a script never admits faster than the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateArgs {
    /// Kind 1.
    TokenBucket {
        /// The emission interval, µs, rounded up.
        emission_us: i64,
        /// The burst.
        burst: i64,
    },
    /// Kind 2.
    SlidingWindow {
        /// Grants allowed in any window.
        limit: i64,
        /// The window, µs, rounded up.
        window_us: i64,
    },
}

impl RateArgs {
    /// The arguments for `rate`.
    pub fn of(rate: &RateSpec) -> Self {
        match rate {
            RateSpec::TokenBucket(g) => RateArgs::TokenBucket {
                emission_us: nanos_to_micros_up(g.emission_ns()),
                burst: i64::from(g.burst()),
            },
            RateSpec::SlidingWindow(w) => RateArgs::SlidingWindow {
                limit: i64::from(w.limit()),
                window_us: nanos_to_micros_up(w.window_ns()),
            },
        }
    }

    /// `(kind, p1, p2)`, in the order the scripts' ARGV and the functions'
    /// parameters take them.
    pub fn positional(self) -> (i32, i64, i64) {
        match self {
            RateArgs::TokenBucket { emission_us, burst } => (1, emission_us, burst),
            RateArgs::SlidingWindow { limit, window_us } => (2, limit, window_us),
        }
    }

    /// The kind alone (reading state needs no more).
    pub fn kind(self) -> i32 {
        self.positional().0
    }

    /// The limit the script enforces: `rate` at whole microseconds, so a
    /// state read in Rust uses the script's own numbers.
    fn as_enforced(self, rate: &RateSpec) -> RateSpec {
        match (self, rate) {
            (RateArgs::TokenBucket { emission_us, .. }, RateSpec::TokenBucket(g)) => {
                RateSpec::TokenBucket(Gcra::with_emission_ns(
                    micros_to_nanos(emission_us),
                    g.burst(),
                ))
            }
            (RateArgs::SlidingWindow { window_us, .. }, RateSpec::SlidingWindow(w)) => {
                RateSpec::SlidingWindow(
                    SlidingWindow::new(w.limit(), micros_to_nanos(window_us)).unwrap_or(*w),
                )
            }
            _ => *rate,
        }
    }
}

/// `(kind, p1, p2)` for `rate` (see [`RateArgs`]).
pub fn script_args(rate: &RateSpec) -> (i32, i64, i64) {
    RateArgs::of(rate).positional()
}

/// `max_wait` as the scripts and functions take it: microseconds, -1 for
/// unbounded (anything past a century).
#[cfg(any(feature = "redis", feature = "postgres"))]
pub(crate) fn max_wait_arg(d: Duration) -> i64 {
    if d >= Duration::from_secs(100 * 365 * 86_400) {
        -1
    } else {
        micros(d)
    }
}

impl Reservation {
    /// The answer of a decision made in Rust
    /// ([`RateSpec::measure_and_replace`]): `Ok(wait_ns)`, a slot that far
    /// ahead starting at `slot_unix_us(wait_ns)`, or `Err(retry_after_ns)`.
    pub(crate) fn of_decision(
        out: Result<u64, u64>,
        slot_unix_us: impl FnOnce(u64) -> u64,
    ) -> Self {
        match out {
            Ok(wait_ns) => Reservation::Granted {
                wait: Duration::from_nanos(wait_ns),
                slot_unix_us: Some(slot_unix_us(wait_ns)),
            },
            Err(retry_ns) => Reservation::Denied {
                retry_after: Duration::from_nanos(retry_ns),
            },
        }
    }

    /// Decodes what the reserve script and function answer: whether a slot
    /// was reserved, microseconds until it (or, refused, until the earliest
    /// one), and the slot's start in Unix microseconds.
    #[cfg(any(feature = "redis", feature = "postgres"))]
    pub(crate) fn from_wire(granted: bool, wait_us: i64, slot_unix_us: i64) -> Self {
        if granted {
            Reservation::Granted {
                wait: from_micros(wait_us),
                slot_unix_us: u64::try_from(slot_unix_us).ok(),
            }
        } else {
            Reservation::Denied {
                retry_after: from_micros(wait_us),
            }
        }
    }
}

impl BatchReservation {
    /// Decodes what the batch script and function answer: whether every key
    /// reserved, microseconds to wait, and the 1-based item that refused.
    #[cfg(any(feature = "redis", feature = "postgres"))]
    pub(crate) fn from_wire(granted: bool, wait_us: i64, refused: i64) -> Self {
        if granted {
            BatchReservation::Granted {
                wait: from_micros(wait_us),
            }
        } else {
            BatchReservation::Denied {
                index: usize::try_from(refused - 1).unwrap_or(0),
                retry_after: from_micros(wait_us),
            }
        }
    }
}

impl RateState {
    /// Decodes what `rate_state` answers: the server's time, the bucket's
    /// theoretical arrival time (0: none) and the window's grants, all µs;
    /// the state is computed with the script's own microsecond numbers.
    #[cfg(any(feature = "redis", feature = "postgres"))]
    pub(crate) fn from_wire(rate: &RateSpec, now_us: i64, tat_us: i64, grants_us: &[i64]) -> Self {
        let now = micros_to_nanos(now_us);
        match RateArgs::of(rate).as_enforced(rate) {
            RateSpec::TokenBucket(g) => {
                RateState::of_bucket(&g, (tat_us > 0).then(|| micros_to_nanos(tat_us)), now)
            }
            RateSpec::SlidingWindow(w) => {
                let grants = grants_us.iter().map(|&v| micros_to_nanos(v)).collect();
                RateState::of_window(&w, &grants, now)
            }
        }
    }
}

impl LeaseOutcome {
    /// Decodes what `lease_acquire` answers: acquired, with the holders
    /// now; or not, with µs until the earliest lease ends.
    #[cfg(any(feature = "redis", feature = "postgres"))]
    pub(crate) fn from_wire(acquired: bool, n: i64) -> Self {
        if acquired {
            LeaseOutcome::Acquired {
                holders: u32::try_from(n).unwrap_or(u32::MAX),
            }
        } else {
            LeaseOutcome::Full {
                retry_after: from_micros(n),
            }
        }
    }
}

impl ConcurrencyState {
    /// Decodes what `lease_state` answers: the server's time, the live
    /// holders, and when the first lease ends (0: none), µs.
    #[cfg(any(feature = "redis", feature = "postgres"))]
    pub(crate) fn from_wire(max: u32, now_us: i64, holders: i64, first_us: i64) -> Self {
        ConcurrencyState {
            holders: u32::try_from(holders).unwrap_or(0),
            max,
            next_expiry: (first_us > 0).then(|| from_micros(first_us - now_us)),
        }
    }
}

/// One policy window as `engines/redis/policy.lua` takes it: `(kind, p1,
/// p2, p3, action, block_us)` (the script's header documents each); kinds 1
/// and 2 are [`RateArgs`], kind 3 a counted window with its slot width in
/// µs rounded up.
#[cfg(any(feature = "redis", feature = "postgres"))]
pub(crate) fn policy_window_args(rule: &WindowRule) -> [i64; 6] {
    let (kind, p1, p2, p3) = match &rule.algorithm {
        WindowAlgorithm::Rate(r) => {
            let (k, p1, p2) = script_args(r);
            (i64::from(k), p1, p2, 0)
        }
        WindowAlgorithm::Counted(c) => (
            3,
            i64::from(c.limit()),
            nanos_to_micros_up(c.width_ns()),
            i64::try_from(c.span()).unwrap_or(i64::MAX),
        ),
    };
    let action = match rule.action {
        WindowAction::Throttle => 1,
        WindowAction::Monitor => 2,
        WindowAction::Block => 3,
    };
    [kind, p1, p2, p3, action, micros(rule.block)]
}

/// `rule` as a store counting whole microseconds enforces it (its
/// intervals rounded up), so outcomes are computed with the store's numbers.
#[cfg(any(feature = "redis", feature = "postgres"))]
fn enforced_rule(rule: &WindowRule) -> WindowRule {
    let algorithm = match &rule.algorithm {
        WindowAlgorithm::Rate(r) => WindowAlgorithm::Rate(RateArgs::of(r).as_enforced(r)),
        WindowAlgorithm::Counted(c) => WindowAlgorithm::Counted(
            c.with_width(micros_to_nanos(nanos_to_micros_up(c.width_ns())))
                .unwrap_or(*c),
        ),
    };
    WindowRule {
        algorithm,
        ..rule.clone()
    }
}

#[cfg(any(feature = "redis", feature = "postgres"))]
impl PolicyOutcome {
    /// Decodes what `policy.lua` and the `policy_check` function answer (see its header): the ban, the
    /// server's time, each window's fit and state after the check; the
    /// outcome is computed in Rust from that state, as the memory engine
    /// computes it ([`crate::policy::decide`]).
    #[cfg(any(feature = "redis", feature = "postgres"))]
    pub(crate) fn from_wire(
        rules: &[WindowRule],
        ban_us: i64,
        ban_started: bool,
        now_us: i64,
        fits_us: &[i64],
        states: &[Vec<i64>],
    ) -> Result<Self, String> {
        if ban_us > 0 && !ban_started {
            return Ok(
                PolicyOutcome::banned(from_micros(ban_us)).at(u64::try_from(now_us).unwrap_or(0))
            );
        }
        if fits_us.len() != rules.len() || states.len() != rules.len() {
            return Err(format!(
                "a policy of {} windows got {} fits and {} states back",
                rules.len(),
                fits_us.len(),
                states.len()
            ));
        }
        let rules: Vec<WindowRule> = rules.iter().map(enforced_rule).collect();
        let now = micros_to_nanos(now_us);
        let fits: Vec<Result<(), u64>> = fits_us
            .iter()
            .map(|&f| {
                if f <= 0 {
                    Ok(())
                } else {
                    Err(micros_to_nanos(f))
                }
            })
            .collect();
        let mut cells: Vec<WindowCell> = rules
            .iter()
            .zip(states)
            .map(|(r, s)| {
                let mut cell = WindowCell::default();
                match &r.algorithm {
                    WindowAlgorithm::Rate(RateSpec::TokenBucket(_)) => {
                        cell.rate.tat = s.first().filter(|&&t| t > 0).map(|&t| micros_to_nanos(t));
                    }
                    WindowAlgorithm::Rate(RateSpec::SlidingWindow(_)) => {
                        cell.rate.grants = s.iter().map(|&g| micros_to_nanos(g)).collect();
                    }
                    WindowAlgorithm::Counted(_) => {
                        if let Some((&first, counts)) = s.split_first() {
                            cell.counts = Counts {
                                first: u64::try_from(first).unwrap_or(0),
                                counts: counts
                                    .iter()
                                    .map(|&n| u32::try_from(n).unwrap_or(u32::MAX))
                                    .collect(),
                            };
                        }
                    }
                }
                cell
            })
            .collect();
        let ban_ns = if ban_started {
            micros_to_nanos(ban_us)
        } else {
            0
        };
        Ok(decide::report(&rules, &mut cells, now, &fits, ban_ns)
            .at(u64::try_from(now_us).unwrap_or(0)))
    }
}
