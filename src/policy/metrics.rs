//! Per-policy counters, labelled by policy and window, never by key (keys
//! go to the decision log), and their snapshot, with RateThrottle's
//! `get_metrics()` fields beside ratesync's own.

use super::decision::{Action, Decision};
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (inclusive, in microseconds) of the check-latency
/// histogram's buckets; a last bucket holds everything above.
pub const EVAL_BUCKETS_US: [u64; 12] = [
    5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 50_000,
];

/// How many recent violations a snapshot lists.
pub const RECENT_VIOLATIONS: usize = 10;

#[derive(Debug, Default)]
struct WindowCounters {
    refused: AtomicU64,
    would_deny: AtomicU64,
}

/// The live counters of one policy.
#[derive(Default)]
pub struct PolicyMetrics {
    allowed: AtomicU64,
    throttled: AtomicU64,
    blocked: AtomicU64,
    denied: AtomicU64,
    exempt: AtomicU64,
    would_deny: AtomicU64,
    violations: AtomicU64,
    bans_started: AtomicU64,
    backend_errors: AtomicU64,
    violations_dropped: AtomicU64,
    eval_buckets: [AtomicU64; EVAL_BUCKETS_US.len() + 1],
    eval_total_ns: AtomicU64,
    windows: std::sync::RwLock<BTreeMap<String, WindowCounters>>,
    recent: Mutex<VecDeque<RecentViolation>>,
    eval_observer: std::sync::OnceLock<Box<dyn Fn(f64) + Send + Sync>>,
}

impl std::fmt::Debug for PolicyMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyMetrics")
            .field("allowed", &self.allowed)
            .finish_non_exhaustive()
    }
}

/// One of the last violations, for the snapshot (the key is left out:
/// metrics never carry keys).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecentViolation {
    /// The window that had no room.
    pub window: String,
    /// What the policy did.
    pub action: &'static str,
    /// When, in Unix milliseconds.
    pub at_ms: u64,
}

/// A policy's counters at one moment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicyMetricsSnapshot {
    /// Checks made.
    pub total_requests: u64,
    /// Admitted (counted, exempt, or fail-open).
    pub allowed_requests: u64,
    /// Refused for any reason (throttled + blocked + denied).
    pub blocked_requests: u64,
    /// `blocked_requests / total_requests` (0 before any request).
    pub block_rate: f64,
    /// Refused by a full `throttle` window.
    pub throttled: u64,
    /// Refused by a full `block` window or a ban.
    pub blocked: u64,
    /// Refused by the deny list.
    pub denied: u64,
    /// Admitted uncounted by the exempt list.
    pub exempt: u64,
    /// Admitted that a shadow window or monitor mode would have refused.
    pub shadow_would_deny: u64,
    /// Checks in which some window had no room.
    pub total_violations: u64,
    /// The last violations, newest last.
    pub recent_violations: Vec<RecentViolation>,
    /// Violations a full hook queue could not take.
    pub violations_dropped: u64,
    /// Bans set by `block` windows or by hand.
    pub bans_started: u64,
    /// Store failures.
    pub backend_errors: u64,
    /// Windows of the default tier.
    pub active_rules: usize,
    /// Entries of the exempt list.
    pub whitelisted_count: usize,
    /// Entries of the deny list.
    pub blacklisted_count: usize,
    /// Per window name: (refused, would_deny).
    pub windows: BTreeMap<String, (u64, u64)>,
    /// Check latency of the checks timed: (upper bound in µs, count) per
    /// bucket, the last `+Inf` as `u64::MAX`. Checks the store answers over
    /// the network are all timed; checks decided in this process one in
    /// [`TIME_ONE_IN`](super::TIME_ONE_IN), an unbiased sample.
    pub eval_histogram: Vec<(u64, u64)>,
    /// Total time spent in the checks timed, in seconds.
    pub eval_seconds_total: f64,
}

impl PolicyMetrics {
    /// Counters for a policy whose windows (over every tier) are named `windows`.
    pub fn new<'a>(windows: impl IntoIterator<Item = &'a str>) -> Self {
        let m = Self::default();
        m.add_windows(windows);
        m
    }

    /// Counts windows named `windows` too (a reload may add some; the
    /// counts of windows it removes stay).
    pub fn add_windows<'a>(&self, windows: impl IntoIterator<Item = &'a str>) {
        let mut map = self
            .windows
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for w in windows {
            map.entry(w.to_string()).or_default();
        }
    }

    /// Counts `d`, and its latency `took` when it was timed.
    pub fn record(&self, d: &Decision, took: Option<Duration>) {
        let counter = match (d.allowed, d.action) {
            (true, Action::Exempt) => &self.exempt,
            (true, _) => &self.allowed,
            (false, Action::Deny) => &self.denied,
            (false, Action::Block) => &self.blocked,
            (false, _) => &self.throttled,
        };
        counter.fetch_add(1, Relaxed);
        if d.allowed && d.action == Action::Exempt {
            self.allowed.fetch_add(1, Relaxed);
        }
        if d.would_deny && d.allowed {
            self.would_deny.fetch_add(1, Relaxed);
        }
        // A window without room is a violation: checks with none (most)
        // take neither the windows' lock nor the recent list's.
        if d.violated {
            self.violations.fetch_add(1, Relaxed);
            let windows = self
                .windows
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for w in d.windows.iter().filter(|w| !w.allowed) {
                if let Some(c) = windows.get(w.name) {
                    if w.action == super::rule::WindowAction::Monitor || d.allowed {
                        c.would_deny.fetch_add(1, Relaxed);
                    } else {
                        c.refused.fetch_add(1, Relaxed);
                    }
                }
            }
            drop(windows);
            let window = d.window.unwrap_or_default().to_string();
            let at_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |t| t.as_millis() as u64);
            let mut recent = self
                .recent
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if recent.len() == RECENT_VIOLATIONS {
                recent.pop_front();
            }
            recent.push_back(RecentViolation {
                window,
                action: d.action.as_str(),
                at_ms,
            });
        }
        let Some(took) = took else { return };
        let us = took.as_micros() as u64;
        let bucket = EVAL_BUCKETS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(EVAL_BUCKETS_US.len());
        self.eval_buckets[bucket].fetch_add(1, Relaxed);
        self.eval_total_ns
            .fetch_add(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX), Relaxed);
        if let Some(observe) = self.eval_observer.get() {
            observe(took.as_secs_f64());
        }
    }

    /// Has `observe` told the latency (seconds) of every later check; false
    /// when an observer was set already (it stays).
    pub fn observe_evals(&self, observe: impl Fn(f64) + Send + Sync + 'static) -> bool {
        self.eval_observer.set(Box::new(observe)).is_ok()
    }

    /// Counts a ban begun.
    pub fn record_ban(&self) {
        self.bans_started.fetch_add(1, Relaxed);
    }

    /// Counts a store failure.
    pub fn record_backend_error(&self) {
        self.backend_errors.fetch_add(1, Relaxed);
    }

    /// Counts a violation the hook queue had no room for.
    pub fn record_violation_dropped(&self) {
        self.violations_dropped.fetch_add(1, Relaxed);
    }

    /// The counters now; `rules`, `exempt` and `deny` are the policy's sizes.
    pub fn snapshot(&self, rules: usize, exempt: usize, deny: usize) -> PolicyMetricsSnapshot {
        let get = |a: &AtomicU64| a.load(Relaxed);
        // Every request is allowed (exempt ones too) or refused one way:
        // the total is their sum, not one more count every check takes.
        let refused = get(&self.throttled) + get(&self.blocked) + get(&self.denied);
        let total = get(&self.allowed) + refused;
        PolicyMetricsSnapshot {
            total_requests: total,
            allowed_requests: get(&self.allowed),
            blocked_requests: refused,
            block_rate: if total == 0 {
                0.0
            } else {
                refused as f64 / total as f64
            },
            throttled: get(&self.throttled),
            blocked: get(&self.blocked),
            denied: get(&self.denied),
            exempt: get(&self.exempt),
            shadow_would_deny: get(&self.would_deny),
            total_violations: get(&self.violations),
            recent_violations: self
                .recent
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .iter()
                .cloned()
                .collect(),
            violations_dropped: get(&self.violations_dropped),
            bans_started: get(&self.bans_started),
            backend_errors: get(&self.backend_errors),
            active_rules: rules,
            whitelisted_count: exempt,
            blacklisted_count: deny,
            windows: self
                .windows
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .iter()
                .map(|(n, c)| (n.clone(), (get(&c.refused), get(&c.would_deny))))
                .collect(),
            eval_histogram: EVAL_BUCKETS_US
                .iter()
                .copied()
                .chain([u64::MAX])
                .zip(self.eval_buckets.iter().map(get))
                .collect(),
            eval_seconds_total: get(&self.eval_total_ns) as f64 / 1e9,
        }
    }
}
