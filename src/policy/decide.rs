//! The one policy decision every Rust-side engine makes, pure and
//! clock-free: a ban check, then every window of the policy at once,
//! all-or-nothing (governor's `measure_and_replace` shape, over a cell that
//! holds the key's ban and each window's state).
//!
//! - A live ban refuses the request before any window is asked; nothing is
//!   counted.
//! - Every window decides on the same `now` and `cost`. When an enforcing
//!   window (`throttle`, `block`) refuses, no window takes anything: the
//!   refused request leaves every count as it was.
//! - Otherwise every enforcing window takes `cost`, and so does every
//!   `monitor` window with room; a monitor window without room reports
//!   "would deny" and takes nothing, exactly as if it enforced alone. A
//!   monitor window never refuses and never stops the others.
//! - An enforcing `block` window that refuses bans the key for its block
//!   duration (the longest, if several), unless the check is `shadow` (a
//!   whole policy in monitor mode), which decides and counts as enforcing
//!   would but never bans.

use super::rule::{WindowAction, WindowAlgorithm, WindowRule};
use crate::counter::Counts;
use crate::quota::{RateCell, RateSpec};
use crate::units::{from_nanos, nanos};
use std::time::Duration;

/// The state of one key of one policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyCell {
    /// When the key's ban ends (engine ns; 0: none).
    pub banned_until: u64,
    /// Each window's state, in the rules' order.
    pub windows: Vec<WindowCell>,
}

/// One window's state: the field its algorithm uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WindowCell {
    /// The [`WindowRule::tag`] of the window this state belongs to.
    pub tag: u64,
    /// Token bucket and exact sliding window.
    pub rate: RateCell,
    /// Fixed window and sliding counter.
    pub counts: Counts,
}

/// What one window found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowOutcome {
    /// The window had room for the request.
    pub allowed: bool,
    /// Requests of cost 1 still possible at once, after this one.
    pub remaining: u32,
    /// Until the window holds nothing any more.
    pub reset_after: Duration,
    /// Until the request would fit (zero when it did).
    pub retry_after: Duration,
    /// Until one more request of cost 1 fits (zero when one does now).
    pub next_after: Duration,
}

/// The outcome of one policy check on one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyOutcome {
    /// The key is banned for this long (a ban found, or one this check
    /// set); `None`: no ban holds.
    pub banned_for: Option<Duration>,
    /// True when this check set the ban.
    pub ban_started: bool,
    /// True when the request was counted (no enforcing window refused and
    /// no ban held).
    pub counted: bool,
    /// Each window's finding, in the rules' order (empty when a ban
    /// refused the request before any window was asked).
    pub windows: Vec<WindowOutcome>,
    /// When the store decided, on its clock (Unix µs), where it says.
    pub at_unix_us: Option<u64>,
}

/// The decision (see the module docs) on `cell` at `now` (engine ns).
pub fn measure_and_replace(
    rules: &[WindowRule],
    cell: &mut PolicyCell,
    now: u64,
    cost: u32,
    shadow: bool,
) -> PolicyOutcome {
    if cell.banned_until > now {
        return PolicyOutcome::banned(from_nanos(cell.banned_until - now));
    }
    cell.banned_until = 0;
    match_windows(rules, &mut cell.windows);
    // On the stack for the usual few windows: an allocation per check was
    // a visible share of an in-process check (`perf`).
    let (mut few, mut many) = ([Ok(()); 8], Vec::new());
    let fits: &mut [Result<(), u64>] = if rules.len() <= few.len() {
        &mut few[..rules.len()]
    } else {
        many.resize(rules.len(), Ok(()));
        &mut many
    };
    for ((r, w), f) in rules
        .iter()
        .zip(cell.windows.iter_mut())
        .zip(fits.iter_mut())
    {
        *f = self::fits(&r.algorithm, w, now, cost);
    }
    let fits = &*fits;
    let refused = refuses(rules, fits);
    if !refused {
        for ((rule, w), fit) in rules.iter().zip(cell.windows.iter_mut()).zip(fits) {
            if fit.is_ok() {
                take(&rule.algorithm, w, now, cost);
            }
        }
    }
    let ban_ns = if shadow { 0 } else { ban_ns(rules, fits) };
    if ban_ns > 0 {
        cell.banned_until = now.saturating_add(ban_ns);
    }
    report(rules, &mut cell.windows, now, fits, ban_ns)
}

/// Puts each rule's state at the rule's place, found by its tag: a reload
/// may add, remove, reorder or change windows (a changed algorithm or length
/// is a new tag, and starts afresh).
fn match_windows(rules: &[WindowRule], windows: &mut Vec<WindowCell>) {
    if windows.len() == rules.len()
        && rules
            .iter()
            .zip(windows.iter())
            .all(|(r, w)| r.tag == w.tag)
    {
        return;
    }
    let mut old = std::mem::take(windows);
    *windows = rules
        .iter()
        .map(|r| match old.iter().position(|w| w.tag == r.tag) {
            Some(i) => old.swap_remove(i),
            None => WindowCell {
                tag: r.tag,
                ..WindowCell::default()
            },
        })
        .collect();
}

impl PolicyOutcome {
    /// A request refused by a ban that still runs for `left`.
    pub(crate) fn banned(left: Duration) -> Self {
        PolicyOutcome {
            banned_for: Some(left),
            ban_started: false,
            counted: false,
            windows: Vec::new(),
            at_unix_us: None,
        }
    }

    /// This outcome, decided at `at_unix_us` on the store's clock.
    pub(crate) fn at(mut self, at_unix_us: u64) -> Self {
        self.at_unix_us = Some(at_unix_us);
        self
    }
}

/// True when an enforcing window has no room.
fn refuses(rules: &[WindowRule], fits: &[Result<(), u64>]) -> bool {
    rules
        .iter()
        .zip(fits)
        .any(|(r, f)| r.enforces() && f.is_err())
}

/// The ban the full `block` windows set: the longest of their durations (ns).
fn ban_ns(rules: &[WindowRule], fits: &[Result<(), u64>]) -> u64 {
    rules
        .iter()
        .zip(fits)
        .filter(|(r, f)| r.action == WindowAction::Block && f.is_err())
        .map(|(r, _)| nanos(r.block))
        .max()
        .unwrap_or(0)
}

/// The outcome of a decision whose windows found `fits` and now hold
/// `windows`, and that set a ban of `ban_ns` (0: none). Engines that decide
/// in the store (Redis, PostgreSQL) send back the fits and the windows'
/// state, and report through this too.
pub(crate) fn report(
    rules: &[WindowRule],
    windows: &mut [WindowCell],
    now: u64,
    fits: &[Result<(), u64>],
    ban_ns: u64,
) -> PolicyOutcome {
    let outcomes = rules
        .iter()
        .zip(windows.iter_mut())
        .zip(fits)
        .map(|((r, w), fit)| outcome(&r.algorithm, w, now, *fit))
        .collect();
    PolicyOutcome {
        banned_for: (ban_ns > 0).then(|| from_nanos(ban_ns)),
        ban_started: ban_ns > 0,
        counted: !refuses(rules, fits),
        windows: outcomes,
        at_unix_us: None,
    }
}

/// `Ok` when `cost` fits in the window now, else `Err(retry_after_ns)`.
/// An exact window's log is trimmed by time only (see
/// [`SlidingWindow::forget_before`](crate::window::SlidingWindow::forget_before)).
fn fits(a: &WindowAlgorithm, w: &mut WindowCell, now: u64, cost: u32) -> Result<(), u64> {
    match a {
        WindowAlgorithm::Rate(RateSpec::SlidingWindow(sw)) => {
            sw.forget_before(&mut w.rate.grants, now);
            match sw.decide_n(&w.rate.grants, now, cost, 0) {
                crate::window::Decision::Granted { .. } => Ok(()),
                crate::window::Decision::Denied { retry_after_ns } => Err(retry_after_ns),
            }
        }
        WindowAlgorithm::Rate(r) => r
            .measure_and_replace(&mut w.rate, now, cost, 0, false)
            .map(drop),
        WindowAlgorithm::Counted(c) => match c.state(&mut w.counts, now, cost).retry_after_ns {
            0 => Ok(()),
            retry => Err(retry),
        },
    }
}

fn take(a: &WindowAlgorithm, w: &mut WindowCell, now: u64, cost: u32) {
    match a {
        WindowAlgorithm::Rate(RateSpec::SlidingWindow(_)) => {
            for _ in 0..cost {
                w.rate.grants.push_back(now);
            }
        }
        WindowAlgorithm::Rate(r) => {
            let _ = r.measure_and_replace(&mut w.rate, now, cost, 0, true);
        }
        WindowAlgorithm::Counted(c) => c.record(&mut w.counts, now, cost),
    }
}

fn outcome(
    a: &WindowAlgorithm,
    w: &mut WindowCell,
    now: u64,
    fit: Result<(), u64>,
) -> WindowOutcome {
    let (remaining, reset_after, next_after) = match a {
        WindowAlgorithm::Rate(RateSpec::TokenBucket(g)) => {
            let s = g.state(w.rate.tat, now);
            (s.remaining, s.reset_after_ns, s.retry_after_ns)
        }
        WindowAlgorithm::Rate(RateSpec::SlidingWindow(sw)) => {
            let s = sw.state(&w.rate.grants, now);
            (s.remaining, s.reset_after_ns, s.retry_after_ns)
        }
        WindowAlgorithm::Counted(c) => {
            let s = c.state(&mut w.counts, now, 1);
            (s.remaining, s.reset_after_ns, s.retry_after_ns)
        }
    };
    WindowOutcome {
        allowed: fit.is_ok(),
        remaining,
        reset_after: from_nanos(reset_after),
        retry_after: fit.err().map_or(Duration::ZERO, from_nanos),
        next_after: from_nanos(next_after),
    }
}

/// How long after `now` the cell still holds something (a ban or a count).
pub fn idle_after_ns(rules: &[WindowRule], cell: &PolicyCell, now: u64) -> u64 {
    let windows = rules
        .iter()
        .zip(&cell.windows)
        .map(|(r, w)| match &r.algorithm {
            WindowAlgorithm::Rate(spec) => spec.idle_after_ns(&w.rate, now),
            WindowAlgorithm::Counted(c) => c.idle_after_ns(&w.counts, now),
        });
    windows.fold(cell.banned_until.saturating_sub(now), u64::max)
}
