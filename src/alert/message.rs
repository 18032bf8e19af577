//! One alert: what it is about, how bad, raised or cleared.

use serde::Serialize;

/// What an alert is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// Mean wait of granted permits.
    AvgWaitMs,
    /// Timeouts in the interval.
    Timeouts,
    /// Share of requests refused.
    TimeoutRate,
    /// Compare-and-set conflicts per minute.
    CasFailures,
    /// Held share of the concurrency slots.
    Concurrency,
    /// Store failures.
    BackendErrors,
    /// One key refused often (from the decision log): `limiter` holds the key.
    Offender,
}

impl AlertKind {
    /// The name used in messages and payloads.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::AvgWaitMs => "avg_wait_ms",
            AlertKind::Timeouts => "timeouts",
            AlertKind::TimeoutRate => "timeout_rate",
            AlertKind::CasFailures => "cas_failures",
            AlertKind::Concurrency => "concurrency",
            AlertKind::BackendErrors => "backend_errors",
            AlertKind::Offender => "offender",
        }
    }
}

/// How bad.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Worth a look.
    Warning,
    /// Act now.
    Critical,
}

impl Severity {
    /// `warning` or `critical`.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// Raised or cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertState {
    /// The condition holds.
    Firing,
    /// The condition cleared (a recovery notice).
    Resolved,
}

/// One notification.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alert {
    /// The limiter's name; for an `offender` alert, the key (client
    /// input: shown quoted and escaped, at most 128 bytes).
    pub limiter: String,
    /// What it is about.
    pub alert: AlertKind,
    /// How bad (for a recovery: the severity that cleared).
    pub severity: Severity,
    /// The measured value.
    pub value: f64,
    /// The threshold it crossed.
    pub threshold: f64,
    /// Raised or cleared.
    pub state: AlertState,
    /// Unix seconds.
    pub at: f64,
}

impl Alert {
    /// A one-line human summary.
    pub fn summary(&self) -> String {
        if self.alert == AlertKind::Offender {
            return match self.state {
                AlertState::Firing => format!(
                    "[{}] ratesync: key {:?} was refused {} times in the window (threshold {})",
                    self.severity.as_str().to_uppercase(),
                    self.limiter,
                    self.value,
                    self.threshold
                ),
                AlertState::Resolved => format!(
                    "[RESOLVED] ratesync: key {:?} is below {} refusals in the window",
                    self.limiter, self.threshold
                ),
            };
        }
        match self.state {
            AlertState::Firing => format!(
                "[{}] ratesync limiter `{}`: {} is {:.2} (threshold {:.2})",
                self.severity.as_str().to_uppercase(),
                self.limiter,
                self.alert.as_str(),
                self.value,
                self.threshold
            ),
            AlertState::Resolved => format!(
                "[RESOLVED] ratesync limiter `{}`: {} is back to {:.2} (threshold {:.2})",
                self.limiter,
                self.alert.as_str(),
                self.value,
                self.threshold
            ),
        }
    }

    /// The key that ties a trigger to its resolve (PagerDuty's dedup key).
    pub fn dedup_key(&self) -> String {
        format!("ratesync/{}/{}", self.limiter, self.alert.as_str())
    }
}
