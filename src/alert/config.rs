//! The `[alerts]` table: thresholds, channels, and the environment overrides.

use crate::config::env::EnvLookup;
use crate::duration::{parse_seconds, seconds, Range};
use crate::error::ConfigError;
use crate::secret::Secret;
use serde::Deserialize;
use std::collections::BTreeMap;

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
    /// Refusals of one key within `offender_window_seconds`, read from the
    /// decision log, that raise a warning (0: off, the default).
    pub offender_blocked: u64,
    /// The window `offender_blocked` counts over (default 300 s, whole minutes).
    pub offender_window_seconds: f64,
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
            offender_blocked: 0,
            offender_window_seconds: 300.0,
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
            if let Some(from) = e.from.as_deref() {
                check_address(from).map_err(|m| err("channels.email.from", &m))?;
            }
            for to in &e.to {
                check_address(to).map_err(|m| err("channels.email.to", &m))?;
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
        env: EnvLookup<'_>,
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

/// An e-mail address as the channel takes it: `user@host` or
/// `Name <user@host>`, one `@` between a non-empty local part and a domain,
/// no spaces or line breaks inside the address.
fn check_address(text: &str) -> Result<(), String> {
    let addr = match (text.find('<'), text.rfind('>')) {
        (Some(a), Some(b)) if a < b && text[b + 1..].trim().is_empty() => &text[a + 1..b],
        (None, None) => text.trim(),
        _ => {
            return Err(format!(
                "is not an e-mail address (`user@host` or `Name <user@host>`): {text:?}"
            ))
        }
    };
    let valid = match addr.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !domain.is_empty()
                && !domain.contains('@')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !addr.chars().any(|c| c.is_whitespace() || c.is_control())
        }
        None => false,
    };
    if valid {
        Ok(())
    } else {
        Err(format!(
            "is not an e-mail address (`user@host` or `Name <user@host>`): {text:?}"
        ))
    }
}
