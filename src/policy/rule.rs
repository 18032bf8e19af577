//! A policy's validated rules: what the engines receive (like
//! [`crate::quota`] for limiters). Nothing here parses configuration.

use crate::counter::CountedWindow;
use crate::quota::RateSpec;
use std::time::Duration;

/// How one window counts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum WindowAlgorithm {
    /// A token bucket or an exact sliding window, as a limiter has.
    Rate(RateSpec),
    /// A fixed window or a sliding counter ([`crate::counter`]).
    Counted(CountedWindow),
}

impl WindowAlgorithm {
    /// The most one request may cost: a bucket's burst, a window's limit.
    pub fn capacity(&self) -> u32 {
        match self {
            WindowAlgorithm::Rate(r) => r.capacity(),
            WindowAlgorithm::Counted(c) => c.limit(),
        }
    }

    /// The name the configuration uses.
    pub fn as_str(&self) -> &'static str {
        match self {
            WindowAlgorithm::Rate(RateSpec::TokenBucket(_)) => "token_bucket",
            WindowAlgorithm::Rate(RateSpec::SlidingWindow(_)) => "sliding_window",
            WindowAlgorithm::Counted(c) if c.is_fixed() => "fixed_window",
            WindowAlgorithm::Counted(_) => "sliding_counter",
        }
    }
}

/// What a window does with the requests above its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WindowAction {
    /// Refuses the excess (HTTP 429).
    Throttle,
    /// Shadow: counts, and reports "would deny", never refuses.
    Monitor,
    /// Refuses the excess and bans the key for the window's block duration.
    Block,
}

impl WindowAction {
    /// The name the configuration uses.
    pub fn as_str(self) -> &'static str {
        match self {
            WindowAction::Throttle => "throttle",
            WindowAction::Monitor => "monitor",
            WindowAction::Block => "block",
        }
    }
}

/// One window of a policy.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowRule {
    /// Its name in headers, decisions and metrics (`"1s"` unless named);
    /// shared, since every decision names its windows.
    pub name: &'static str,
    /// How it counts.
    pub algorithm: WindowAlgorithm,
    /// What it does above its limit.
    pub action: WindowAction,
    /// `block` windows: how long a key that exceeds it is banned (zero:
    /// only the excess is refused).
    pub block: Duration,
    /// The window's length, for headers (`w=`).
    pub window: Duration,
    /// The window's limit, for headers (`q=`).
    pub limit: u32,
    /// Which stored state is this window's: a hash of [`state_name`](Self::state_name).
    pub tag: u64,
}

impl WindowRule {
    /// The name of the window's stored state: its algorithm, name and
    /// length (`sliding_window:burst:1000`, in ms). A reload that changes a
    /// window's algorithm or length gives it new state (it starts afresh);
    /// one that changes only its limit or action keeps the count, which is
    /// right under any limit: logs are trimmed by time only, counters by slot.
    pub fn state_name(algorithm: &WindowAlgorithm, name: &str, window: Duration) -> String {
        format!("{}:{name}:{}", algorithm.as_str(), window.as_millis())
    }

    /// [`tag`](Self::tag) of a window: FNV-1a of its state name, the same
    /// in every process and build.
    pub fn state_tag(state_name: &str) -> u64 {
        state_name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
    }

    /// True when the window can refuse a request (not a shadow window).
    pub fn enforces(&self) -> bool {
        self.action != WindowAction::Monitor
    }
}

/// Which rate-limit headers a policy's decisions carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HeaderStyle {
    /// The draft's `RateLimit-Policy` and `RateLimit`, and the legacy trio.
    #[default]
    Both,
    /// `RateLimit-Policy` and `RateLimit` only.
    Draft,
    /// `X-RateLimit-Limit`, `-Remaining`, `-Reset` only.
    Legacy,
    /// No rate-limit headers (a refusal still carries `Retry-After`).
    None,
}

impl HeaderStyle {
    /// The name the configuration uses.
    pub fn as_str(self) -> &'static str {
        match self {
            HeaderStyle::Both => "both",
            HeaderStyle::Draft => "draft",
            HeaderStyle::Legacy => "legacy",
            HeaderStyle::None => "none",
        }
    }
}

/// Whether a policy refuses or only reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyMode {
    /// Refuses what its windows and lists refuse.
    #[default]
    Enforce,
    /// Shadow: decides and counts as `enforce` would, reports `would_deny`,
    /// admits everything and bans nobody.
    Monitor,
}

impl PolicyMode {
    /// The name the configuration uses.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyMode::Enforce => "enforce",
            PolicyMode::Monitor => "monitor",
        }
    }
}

/// A policy, validated: what [`crate::Registry`] builds a
/// [`Policy`](super::Policy) from.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicySpec {
    /// The store holding its state.
    pub store: String,
    /// What a request's key is made of, in order.
    pub key: Vec<super::request::KeyPart>,
    /// The default windows.
    pub windows: Vec<WindowRule>,
    /// Per-tier windows, replacing the default ones.
    pub tiers: std::collections::BTreeMap<String, Vec<WindowRule>>,
    /// Never limited, never counted.
    pub exempt: super::list::KeyList,
    /// Always refused (403).
    pub deny: super::list::KeyList,
    /// A request's cost unless it names one.
    pub cost: u32,
    /// Enforce or shadow.
    pub mode: PolicyMode,
    /// The headers decisions carry.
    pub headers: HeaderStyle,
    /// What a store failure does.
    pub on_backend_error: crate::quota::FailureMode,
    /// What goes to the decision log (see [`crate::decision_log`]).
    pub log: crate::decision_log::LogRule,
}

impl PolicySpec {
    /// The windows that apply to a request of `tier`, and the tier if the
    /// policy has it.
    pub fn windows_for<'s>(&'s self, tier: Option<&str>) -> (&'s [WindowRule], Option<&'s str>) {
        match tier.and_then(|t| self.tiers.get_key_value(t)) {
            Some((name, rules)) => (rules, Some(name)),
            None => (&self.windows, None),
        }
    }
}
