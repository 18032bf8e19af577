//! The alert loop: thresholds on every limiter's metrics, cooldowns, recovery notices, and the channels that carry them.
//!
//! Every `interval` the loop reads the registry's metrics, compares them with
//! the previous reading, and evaluates per limiter:
//!
//! | alert | value | severity |
//! |---|---|---|
//! | `avg_wait_ms` | mean wait of the permits granted in the interval | warning at `avg_wait_ms_warning`, critical at `avg_wait_ms_critical` |
//! | `timeouts` | timeouts in the interval | warning at `timeouts_per_interval` |
//! | `timeout_rate` | timeouts / (grants + timeouts) in the interval | critical at `timeout_rate` |
//! | `cas_failures` | compare-and-set conflicts per minute | warning at `cas_failures_per_minute` |
//! | `concurrency` | slots held / `max_concurrent` | warning at `concurrency_ratio` (0.9) |
//! | `backend_errors` | store failures in the interval | critical at `backend_errors_per_interval` |
//! | `offender` | refusals of one key in the last `offender_window_seconds` (300), from the decision log | warning at `offender_blocked` (0: off) |
//!
//! An `offender` alert names the key in place of the limiter (quoted and
//! escaped in the summary: it is client input), one alert per key.
//!
//! A condition that holds is sent to every channel at once, then again at
//! most once per `cooldown` for the same (limiter, alert, severity); when it
//! clears, a recovery notice goes out (PagerDuty: `resolve` with the same
//! dedup key). With `shared_cooldown_store`, the cooldown is a token bucket in
//! that store, so hosts sharing the store page once between them. A channel
//! that fails is logged and reported in the [`TickReport`]; it never stops
//! the loop or the other channels.
//!
//! ```toml
//! [alerts]
//! interval_seconds = 5
//! cooldown_seconds = 300
//! [alerts.thresholds]
//! avg_wait_ms_critical = 1500
//! [alerts.channels.log]
//! [alerts.channels.webhook]
//! url = "${ALERT_WEBHOOK_URL}"
//! headers = { Authorization = "Bearer ${ALERT_TOKEN}" }
//! [alerts.channels.pagerduty]
//! routing_key = "${PD_ROUTING_KEY}"
//! ```

mod channel;
pub mod config;
mod message;
#[cfg(feature = "alerts")]
mod network;
mod run;

pub use channel::{Channel, LogChannel};
pub use config::{
    AlertConfig, ChannelsConfig, EmailConfig, LogConfig, PagerDutyConfig, SlackConfig, Thresholds,
    WebhookConfig,
};
pub use message::{Alert, AlertKind, AlertState, Severity};
#[cfg(feature = "alerts")]
pub use network::{EmailChannel, PagerDutyChannel, SlackChannel, WebhookChannel};
pub use run::{AlertLoop, Delivery, TickReport};
