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

use crate::config::Config;
use crate::duration::{parse_seconds, seconds, Range};
use crate::error::ConfigError;
use crate::metrics::MetricsSnapshot;
use crate::registry::Registry;
use crate::secret::Secret;
use crate::{LimiterConfig, Result};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Thresholds (see the module docs for what each measures).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Thresholds {
    /// Mean wait in the interval that raises a warning, ms.
    pub avg_wait_ms_warning: f64,
    /// Mean wait in the interval that raises a critical alert, ms.
    pub avg_wait_ms_critical: f64,
    /// Timeouts in one interval that raise a warning.
    pub timeouts_per_interval: u64,
    /// Share of requests refused in the interval that raises a critical alert.
    pub timeout_rate: f64,
    /// Compare-and-set conflicts per minute that raise a warning.
    pub cas_failures_per_minute: f64,
    /// Held share of the concurrency slots that raises a warning.
    pub concurrency_ratio: f64,
    /// Store failures in one interval that raise a critical alert.
    pub backend_errors_per_interval: u64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            avg_wait_ms_warning: 1000.0,
            avg_wait_ms_critical: 1500.0,
            timeouts_per_interval: 3,
            timeout_rate: 0.5,
            cas_failures_per_minute: 100.0,
            concurrency_ratio: 0.9,
            backend_errors_per_interval: 1,
        }
    }
}

/// `[alerts.channels.webhook]`: a JSON POST of each alert.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Off when false (default true).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Where to POST.
    pub url: Option<Secret>,
    /// Extra request headers (their values are secrets: tokens live there).
    #[serde(default)]
    pub headers: BTreeMap<String, Secret>,
    /// Seconds a delivery may take (default 5).
    pub timeout_seconds: Option<f64>,
}

/// `[alerts.channels.slack]`: an incoming-webhook message (text + blocks).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlackConfig {
    /// Off when false (default true).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The incoming webhook URL (its path is the token).
    pub webhook_url: Option<Secret>,
    /// Seconds a delivery may take (default 5).
    pub timeout_seconds: Option<f64>,
}

/// `[alerts.channels.pagerduty]`: Events API v2, trigger and resolve.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PagerDutyConfig {
    /// Off when false (default true).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The integration's routing key.
    pub routing_key: Option<Secret>,
    /// The Events API endpoint (default `https://events.pagerduty.com/v2/enqueue`).
    pub url: Option<Secret>,
    /// Seconds a delivery may take (default 5).
    pub timeout_seconds: Option<f64>,
}

/// `[alerts.channels.email]`: one message per alert over SMTP.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    /// Off when false (default true).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The SMTP server.
    pub smtp_host: Option<String>,
    /// Its port (default 587).
    pub smtp_port: Option<u16>,
    /// Upgrade with STARTTLS (default true; false only for a local relay).
    #[serde(default = "yes")]
    pub starttls: bool,
    /// Login, if the server wants one.
    pub username: Option<String>,
    /// Password for `username`.
    pub password: Option<Secret>,
    /// The sender address.
    pub from: Option<String>,
    /// The recipients.
    #[serde(default)]
    pub to: Vec<String>,
    /// Seconds a delivery may take (default 10).
    pub timeout_seconds: Option<f64>,
}

/// `[alerts.channels.log]`: `tracing` events (`warn!`, `error!`, `info!` on recovery).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// Off when false (default true).
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn yes() -> bool {
    true
}

/// `[alerts.channels]`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelsConfig {
    /// Log through `tracing`.
    pub log: Option<LogConfig>,
    /// Generic JSON webhook.
    pub webhook: Option<WebhookConfig>,
    /// Slack incoming webhook.
    pub slack: Option<SlackConfig>,
    /// PagerDuty Events API v2.
    pub pagerduty: Option<PagerDutyConfig>,
    /// Email over SMTP.
    pub email: Option<EmailConfig>,
}

/// The `[alerts]` table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertConfig {
    /// Seconds between evaluations (default 5).
    #[serde(default = "default_interval")]
    pub interval_seconds: f64,
    /// Seconds before the same (limiter, alert, severity) is sent again (default 300).
    #[serde(default = "default_cooldown")]
    pub cooldown_seconds: f64,
    /// A store that keeps the cooldowns, so hosts sharing it page once.
    pub shared_cooldown_store: Option<String>,
    /// The thresholds.
    #[serde(default)]
    pub thresholds: Thresholds,
    /// Where alerts go (default: the log only).
    #[serde(default)]
    pub channels: ChannelsConfig,
}

fn default_interval() -> f64 {
    5.0
}

fn default_cooldown() -> f64 {
    300.0
}

impl Default for AlertConfig {
    fn default() -> Self {
        Self {
            interval_seconds: default_interval(),
            cooldown_seconds: default_cooldown(),
            shared_cooldown_store: None,
            thresholds: Thresholds::default(),
            channels: ChannelsConfig {
                log: Some(LogConfig { enabled: true }),
                ..Default::default()
            },
        }
    }
}

impl AlertConfig {
    /// Checks the table; every missing setting of an enabled channel is an
    /// error naming it (`Webhook url not configured`, ...).
    pub fn validate(&self, source: &str) -> std::result::Result<(), ConfigError> {
        let err = |key: &str, msg: &str| ConfigError::new(source, format!("alerts.{key}"), msg);
        if !(self.interval_seconds.is_finite() && self.interval_seconds > 0.0) {
            return Err(err(
                "interval_seconds",
                "must be a positive number of seconds",
            ));
        }
        let c = &self.channels;
        let timeouts = [
            (
                "channels.webhook.timeout_seconds",
                c.webhook.as_ref().and_then(|w| w.timeout_seconds),
            ),
            (
                "channels.slack.timeout_seconds",
                c.slack.as_ref().and_then(|w| w.timeout_seconds),
            ),
            (
                "channels.pagerduty.timeout_seconds",
                c.pagerduty.as_ref().and_then(|w| w.timeout_seconds),
            ),
            (
                "channels.email.timeout_seconds",
                c.email.as_ref().and_then(|w| w.timeout_seconds),
            ),
        ];
        // Ticks more often than every 10 ms measure nothing but noise.
        let durations = [
            (
                "interval_seconds",
                Some(self.interval_seconds),
                Range::at_least(0.01),
            ),
            (
                "cooldown_seconds",
                Some(self.cooldown_seconds),
                Range::ZERO_OR_MORE,
            ),
        ]
        .into_iter()
        .chain(timeouts.map(|(k, v)| (k, v, Range::at_least(0.001))));
        for (key, value, range) in durations {
            if let Some(v) = value {
                seconds(v, range).map_err(|m| err(key, &m))?;
            }
        }
        let on = |enabled: bool| enabled;
        if let Some(w) = c.webhook.as_ref().filter(|w| on(w.enabled)) {
            if w.url.as_ref().is_none_or(Secret::is_empty) {
                return Err(err("channels.webhook.url", "Webhook url not configured"));
            }
        }
        if let Some(s) = c.slack.as_ref().filter(|s| on(s.enabled)) {
            if s.webhook_url.as_ref().is_none_or(Secret::is_empty) {
                return Err(err(
                    "channels.slack.webhook_url",
                    "Slack webhook_url not configured",
                ));
            }
        }
        if let Some(p) = c.pagerduty.as_ref().filter(|p| on(p.enabled)) {
            if p.routing_key.as_ref().is_none_or(Secret::is_empty) {
                return Err(err(
                    "channels.pagerduty.routing_key",
                    "PagerDuty routing_key not configured",
                ));
            }
        }
        if let Some(e) = c.email.as_ref().filter(|e| on(e.enabled)) {
            if e.smtp_host.as_deref().unwrap_or("").is_empty() {
                return Err(err(
                    "channels.email.smtp_host",
                    "Email smtp_host not configured",
                ));
            }
            if e.from.as_deref().unwrap_or("").is_empty() {
                return Err(err("channels.email.from", "Email from not configured"));
            }
            if e.to.is_empty() {
                return Err(err("channels.email.to", "Email to not configured"));
            }
        }
        let needs_network = c.webhook.as_ref().is_some_and(|w| w.enabled)
            || c.slack.as_ref().is_some_and(|s| s.enabled)
            || c.pagerduty.as_ref().is_some_and(|p| p.enabled)
            || c.email.as_ref().is_some_and(|e| e.enabled);
        if needs_network && !cfg!(feature = "alerts") {
            return Err(err(
                "channels",
                "webhook, Slack, PagerDuty and email channels need ratesync's `alerts` cargo feature",
            ));
        }
        Ok(())
    }

    /// Applies the environment variables `RATESYNC_ALERT_INTERVAL`
    /// (seconds), `RATESYNC_MAX_AVG_WAIT_MS` (the critical mean wait) and
    /// `RATESYNC_MAX_TIMEOUTS` (timeouts per interval), where set; the
    /// older spellings `RATE_SYNC_*` are read when the new ones are unset.
    /// A value that is not a number in range is an error naming the variable.
    pub fn with_env_overrides(self) -> std::result::Result<Self, ConfigError> {
        self.with_overrides_from(&|name| std::env::var(name).ok())
    }

    /// [`with_env_overrides`](Self::with_env_overrides) reading variables
    /// through `env`.
    pub fn with_overrides_from(
        mut self,
        env: crate::config::EnvLookup<'_>,
    ) -> std::result::Result<Self, ConfigError> {
        let read = |name: &str| -> Option<(String, String)> {
            let old = format!("RATE_SYNC_{}", &name["RATESYNC_".len()..]);
            env(name)
                .map(|v| (name.to_string(), v))
                .or_else(|| env(&old).map(|v| (old, v)))
        };
        let bad = |var: &str, m: String| ConfigError::new("(environment)", var, m);
        let number = |name: &str| -> std::result::Result<Option<f64>, ConfigError> {
            let Some((var, v)) = read(name) else {
                return Ok(None);
            };
            match v.trim().parse::<f64>() {
                Ok(n) if n.is_finite() && n >= 0.0 => Ok(Some(n)),
                _ => Err(bad(&var, format!("must be a number >= 0, got {v:?}"))),
            }
        };
        if let Some((var, v)) = read("RATESYNC_ALERT_INTERVAL") {
            let d = parse_seconds(&v, Range::at_least(0.01)).map_err(|m| bad(&var, m))?;
            self.interval_seconds = d.as_secs_f64();
        }
        if let Some(v) = number("RATESYNC_MAX_AVG_WAIT_MS")? {
            self.thresholds.avg_wait_ms_critical = v;
            self.thresholds.avg_wait_ms_warning = self.thresholds.avg_wait_ms_warning.min(v);
        }
        if let Some(v) = number("RATESYNC_MAX_TIMEOUTS")? {
            self.thresholds.timeouts_per_interval = v as u64;
        }
        Ok(self)
    }
}

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
    /// The limiter's name.
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

/// Where alerts go.
#[async_trait]
pub trait Channel: Send + Sync {
    /// For reports and logs: `log`, `webhook`, ...
    fn name(&self) -> &str;
    /// Delivers one alert; Err says why it could not.
    async fn send(&self, alert: &Alert) -> std::result::Result<(), String>;
}

/// The `log` channel: `tracing` events.
#[derive(Debug, Default)]
pub struct LogChannel;

#[async_trait]
impl Channel for LogChannel {
    fn name(&self) -> &str {
        "log"
    }

    async fn send(&self, a: &Alert) -> std::result::Result<(), String> {
        match (a.state, a.severity) {
            (AlertState::Resolved, _) => {
                tracing::info!(limiter = %a.limiter, alert = a.alert.as_str(), value = a.value, "{}", a.summary())
            }
            (_, Severity::Warning) => {
                tracing::warn!(limiter = %a.limiter, alert = a.alert.as_str(), value = a.value, threshold = a.threshold, "{}", a.summary())
            }
            (_, Severity::Critical) => {
                tracing::error!(limiter = %a.limiter, alert = a.alert.as_str(), value = a.value, threshold = a.threshold, "{}", a.summary())
            }
        }
        Ok(())
    }
}

#[cfg(feature = "alerts")]
mod network;
#[cfg(feature = "alerts")]
pub use network::{EmailChannel, PagerDutyChannel, SlackChannel, WebhookChannel};

/// One delivery attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// The channel's name.
    pub channel: String,
    /// What was sent.
    pub alert: Alert,
    /// Ok, or why it failed.
    pub result: std::result::Result<(), String>,
}

/// What one evaluation did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TickReport {
    /// Alerts and recovery notices sent (to every channel).
    pub sent: Vec<Alert>,
    /// Firing conditions held back by the cooldown.
    pub suppressed: Vec<Alert>,
    /// Every channel's result for every alert sent.
    pub deliveries: Vec<Delivery>,
}

impl TickReport {
    /// The deliveries that failed.
    pub fn failures(&self) -> impl Iterator<Item = &Delivery> {
        self.deliveries.iter().filter(|d| d.result.is_err())
    }
}

/// The alert loop (see the module docs).
pub struct AlertLoop {
    registry: Registry,
    config: AlertConfig,
    channels: Vec<Arc<dyn Channel>>,
    previous: Option<(Instant, BTreeMap<String, MetricsSnapshot>)>,
    firing: HashMap<(String, AlertKind), (Severity, f64)>,
    last_sent: HashMap<(String, AlertKind, Severity), Instant>,
    shared: Option<crate::Limiter>,
}

impl std::fmt::Debug for AlertLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlertLoop")
            .field("config", &self.config)
            .field(
                "channels",
                &self
                    .channels
                    .iter()
                    .map(|c| c.name().to_string())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl AlertLoop {
    /// A loop over `registry` with the channels `config` enables.
    pub fn new(registry: Registry, config: AlertConfig) -> Result<Self> {
        config.validate("<alerts>")?;
        let mut channels: Vec<Arc<dyn Channel>> = Vec::new();
        let c = &config.channels;
        if c.log.as_ref().is_some_and(|l| l.enabled) {
            channels.push(Arc::new(LogChannel));
        }
        #[cfg(feature = "alerts")]
        {
            if let Some(w) = c.webhook.as_ref().filter(|w| w.enabled) {
                channels.push(Arc::new(WebhookChannel::new(w)));
            }
            if let Some(s) = c.slack.as_ref().filter(|s| s.enabled) {
                channels.push(Arc::new(SlackChannel::new(s)));
            }
            if let Some(p) = c.pagerduty.as_ref().filter(|p| p.enabled) {
                channels.push(Arc::new(PagerDutyChannel::new(p)));
            }
            if let Some(e) = c.email.as_ref().filter(|e| e.enabled) {
                channels.push(Arc::new(
                    EmailChannel::new(e).map_err(crate::Error::Unsupported)?,
                ));
            }
        }
        let shared = match &config.shared_cooldown_store {
            None => None,
            Some(store) => {
                // The same name on every host, so hosts sharing the store
                // share the buckets.
                let lim = registry.unlisted(
                    &format!("__ratesync_alert_cooldown_{store}"),
                    LimiterConfig::token_bucket(1.0 / config.cooldown_seconds.max(1e-3), 1)
                        .with_store(store.clone()),
                )?;
                Some(lim)
            }
        };
        Ok(Self {
            registry,
            config,
            channels,
            previous: None,
            firing: HashMap::new(),
            last_sent: HashMap::new(),
            shared,
        })
    }

    /// The loop configured by a configuration's `[alerts]` table (the log
    /// channel alone when it has none).
    pub fn from_config(registry: Registry, config: &Config) -> Result<Self> {
        Self::new(registry, config.alerts.clone().unwrap_or_default())
    }

    /// Adds a channel of your own.
    pub fn with_channel(mut self, channel: Arc<dyn Channel>) -> Self {
        self.channels.push(channel);
        self
    }

    /// The channels alerts go to, by name.
    pub fn channel_names(&self) -> Vec<String> {
        self.channels.iter().map(|c| c.name().to_string()).collect()
    }

    /// The conditions that hold for one limiter, given two readings.
    fn conditions(
        &self,
        name: &str,
        now: &MetricsSnapshot,
        before: Option<&MetricsSnapshot>,
        elapsed: Duration,
    ) -> Vec<(AlertKind, Option<Severity>, f64, f64)> {
        let t = &self.config.thresholds;
        let zero = MetricsSnapshot::default();
        let before = before.unwrap_or(&zero);
        let grants = now
            .total_acquisitions
            .saturating_sub(before.total_acquisitions);
        let timeouts = now.timeouts.saturating_sub(before.timeouts);
        let mut out = Vec::new();
        let avg = if grants > 0 {
            (now.total_wait_time_ms - before.total_wait_time_ms).max(0.0) / grants as f64
        } else {
            0.0
        };
        let sev = if avg >= t.avg_wait_ms_critical {
            Some((Severity::Critical, t.avg_wait_ms_critical))
        } else if avg >= t.avg_wait_ms_warning {
            Some((Severity::Warning, t.avg_wait_ms_warning))
        } else {
            None
        };
        out.push((
            AlertKind::AvgWaitMs,
            sev.map(|s| s.0),
            avg,
            sev.map_or(t.avg_wait_ms_warning, |s| s.1),
        ));
        let hit = |v: f64, th: f64| v >= th && th > 0.0;
        out.push((
            AlertKind::Timeouts,
            hit(timeouts as f64, t.timeouts_per_interval as f64).then_some(Severity::Warning),
            timeouts as f64,
            t.timeouts_per_interval as f64,
        ));
        let rate = if grants + timeouts > 0 {
            timeouts as f64 / (grants + timeouts) as f64
        } else {
            0.0
        };
        out.push((
            AlertKind::TimeoutRate,
            hit(rate, t.timeout_rate).then_some(Severity::Critical),
            rate,
            t.timeout_rate,
        ));
        let minutes = elapsed.as_secs_f64().max(1e-3) / 60.0;
        let cas = now.cas_failures.saturating_sub(before.cas_failures) as f64 / minutes;
        out.push((
            AlertKind::CasFailures,
            hit(cas, t.cas_failures_per_minute).then_some(Severity::Warning),
            cas,
            t.cas_failures_per_minute,
        ));
        if let Some(max) = self
            .registry
            .limiter(name)
            .ok()
            .and_then(|l| l.spec().concurrency.map(|c| c.max))
        {
            let ratio = now.current_concurrent.max(0) as f64 / f64::from(max.max(1));
            out.push((
                AlertKind::Concurrency,
                hit(ratio, t.concurrency_ratio).then_some(Severity::Warning),
                ratio,
                t.concurrency_ratio,
            ));
        }
        let errors = now.backend_errors.saturating_sub(before.backend_errors) as f64;
        out.push((
            AlertKind::BackendErrors,
            hit(errors, t.backend_errors_per_interval as f64).then_some(Severity::Critical),
            errors,
            t.backend_errors_per_interval as f64,
        ));
        out
    }

    /// Whether the cooldown lets this alert go now (and starts it if so).
    async fn cooldown_allows(&mut self, key: &(String, AlertKind, Severity)) -> bool {
        if let Some(shared) = &self.shared {
            let k = format!("{}/{}/{}", key.0, key.1.as_str(), key.2.as_str());
            return match shared.key(k).try_acquire().await {
                Ok(p) => p.is_some(),
                // The store failed: page rather than stay silent.
                Err(_) => true,
            };
        }
        let cooldown = Duration::from_secs_f64(self.config.cooldown_seconds.max(0.0));
        match self.last_sent.get(key) {
            Some(at) if at.elapsed() < cooldown => false,
            _ => {
                self.last_sent.insert(key.clone(), Instant::now());
                true
            }
        }
    }

    /// Evaluates once: reads the metrics, sends what is due to every channel
    /// (concurrently), and reports it.
    pub async fn tick(&mut self) -> TickReport {
        let now_metrics = self.registry.metrics();
        let now = Instant::now();
        let (elapsed, previous) = match self.previous.take() {
            Some((at, m)) => (now.duration_since(at), Some(m)),
            None => (Duration::from_secs_f64(self.config.interval_seconds), None),
        };
        let mut report = TickReport::default();
        let mut to_send = Vec::new();
        for (name, m) in &now_metrics {
            let before = previous.as_ref().and_then(|p| p.get(name));
            for (kind, severity, value, threshold) in self.conditions(name, m, before, elapsed) {
                let id = (name.clone(), kind);
                match severity {
                    Some(sev) => {
                        let alert = Alert {
                            limiter: name.clone(),
                            alert: kind,
                            severity: sev,
                            value,
                            threshold,
                            state: AlertState::Firing,
                            at: unix_now(),
                        };
                        self.firing.insert(id, (sev, threshold));
                        if self.cooldown_allows(&(name.clone(), kind, sev)).await {
                            to_send.push(alert);
                        } else {
                            report.suppressed.push(alert);
                        }
                    }
                    None => {
                        if let Some((sev, th)) = self.firing.remove(&id) {
                            to_send.push(Alert {
                                limiter: name.clone(),
                                alert: kind,
                                severity: sev,
                                value,
                                threshold: th,
                                state: AlertState::Resolved,
                                at: unix_now(),
                            });
                            // A new episode pages at once, whatever the cooldown.
                            self.last_sent.retain(|k, _| !(k.0 == *name && k.1 == kind));
                        }
                    }
                }
            }
        }
        self.previous = Some((now, now_metrics));
        let mut jobs = tokio::task::JoinSet::new();
        for alert in &to_send {
            for ch in &self.channels {
                let (ch, alert) = (ch.clone(), alert.clone());
                jobs.spawn(async move {
                    let result = ch.send(&alert).await;
                    if let Err(e) = &result {
                        tracing::warn!(channel = ch.name(), error = %e, "alert channel failed");
                    }
                    Delivery {
                        channel: ch.name().to_string(),
                        alert,
                        result,
                    }
                });
            }
        }
        while let Some(done) = jobs.join_next().await {
            match done {
                Ok(d) => report.deliveries.push(d),
                Err(e) => tracing::warn!(error = %e, "an alert delivery task failed"),
            }
        }
        report.sent = to_send;
        report
    }

    /// Runs [`tick`](Self::tick) every `interval_seconds` until the handle is
    /// aborted or the runtime stops.
    pub fn spawn(mut self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let every = Duration::from_secs_f64(self.config.interval_seconds);
            let mut timer = tokio::time::interval(every);
            timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                timer.tick().await;
                let report = self.tick().await;
                for f in report.failures() {
                    tracing::debug!(channel = %f.channel, "alert delivery failed");
                }
            }
        })
    }
}
