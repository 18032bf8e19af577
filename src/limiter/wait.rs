//! How long a request may wait, and why it got no permit.

use crate::quota::RateSpec;
use std::time::Duration;
use tokio::time::Instant;

/// How long a request may wait.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Wait {
    /// Not at all (`try_acquire`).
    No,
    /// Until the deadline.
    Until(Deadline),
}

/// A bound on waiting: the instant it ends (`None`: never) and, for
/// messages, the bound the caller asked for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadline {
    at: Option<Instant>,
    pub(crate) asked: Option<Duration>,
}

impl Deadline {
    pub(crate) const NEVER: Deadline = Deadline {
        at: None,
        asked: None,
    };

    pub(crate) fn after(timeout: Duration) -> Self {
        Deadline {
            at: Instant::now().checked_add(timeout),
            asked: Some(timeout),
        }
    }
}

impl Wait {
    /// Time left now; `None` means unbounded. Reads the clock only for a deadline.
    pub(crate) fn remaining(self) -> Option<Duration> {
        match self {
            Wait::No => Some(Duration::ZERO),
            Wait::Until(d) => d.at.map(|at| at.saturating_duration_since(Instant::now())),
        }
    }
}

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exhausted {
    /// No concurrency slot came free.
    Concurrency,
    /// The token bucket's next slot lies beyond the bound.
    Rate,
    /// The sliding window's next slot lies beyond the bound.
    Window,
}

impl Exhausted {
    pub(crate) fn of(rate: &RateSpec) -> Self {
        match rate {
            RateSpec::TokenBucket(_) => Exhausted::Rate,
            RateSpec::SlidingWindow(_) => Exhausted::Window,
        }
    }

    /// The name [`Error::Timeout`]'s `reason` carries.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Exhausted::Concurrency => "concurrency",
            Exhausted::Rate => "rate",
            Exhausted::Window => "window",
        }
    }
}

/// Why a request got no permit, before it becomes `None` or `Error::Timeout`.
pub(crate) struct Refusal {
    pub(crate) retry_after: Option<Duration>,
    pub(crate) by: Exhausted,
}
