//! The alert loop: reads the registry's metrics every interval, evaluates the
//! thresholds, holds repeats back for the cooldown, and sends to every channel.

use super::channel::{Channel, LogChannel};
use super::config::AlertConfig;
use super::message::{Alert, AlertKind, AlertState, Severity};
#[cfg(feature = "alerts")]
use super::network::{EmailChannel, PagerDutyChannel, SlackChannel, WebhookChannel};
use crate::config::Config;
use crate::metrics::MetricsSnapshot;
use crate::registry::Registry;
use crate::{LimiterConfig, Result};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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

    /// Keys refused at least `offender_blocked` times in the window, read
    /// from the decision log, and the ones firing before that no longer are.
    #[allow(clippy::type_complexity)]
    async fn offender_conditions(&self) -> Vec<(String, (AlertKind, Option<Severity>, f64, f64))> {
        let t = &self.config.thresholds;
        let Some(log) = self
            .registry
            .decision_log()
            .filter(|_| t.offender_blocked > 0)
        else {
            return Vec::new();
        };
        let window = Duration::from_secs_f64(t.offender_window_seconds.max(60.0));
        let threshold = t.offender_blocked as f64;
        let found = match log
            .analytics()
            .over_threshold(window, t.offender_blocked, None)
            .await
        {
            Ok(f) => f,
            Err(e) => {
                // Unknown is not "cleared": firing offenders stay as they are.
                tracing::warn!(error = %e, "cannot read offenders from the decision log");
                return Vec::new();
            }
        };
        let mut out: Vec<_> = found
            .into_iter()
            .map(|o| {
                let key = crate::decision_log::event::bounded(&o.key, 128);
                (
                    key,
                    (
                        AlertKind::Offender,
                        Some(Severity::Warning),
                        o.blocked as f64,
                        threshold,
                    ),
                )
            })
            .collect();
        for (name, kind) in self.firing.keys() {
            if *kind == AlertKind::Offender && !out.iter().any(|(k, _)| k == name) {
                out.push((name.clone(), (AlertKind::Offender, None, 0.0, threshold)));
            }
        }
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
        let mut conditions = Vec::new();
        for (name, m) in &now_metrics {
            let before = previous.as_ref().and_then(|p| p.get(name));
            for c in self.conditions(name, m, before, elapsed) {
                conditions.push((name.clone(), c));
            }
        }
        conditions.extend(self.offender_conditions().await);
        for (name, (kind, severity, value, threshold)) in conditions {
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
                        self.last_sent.retain(|k, _| !(k.0 == name && k.1 == kind));
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
