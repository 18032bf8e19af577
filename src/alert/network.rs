//! Alert channels that deliver over the network: generic webhook, Slack, PagerDuty (HTTP) and email (SMTP).

use super::channel::Channel;
use super::config::{EmailConfig, PagerDutyConfig, SlackConfig, WebhookConfig};
use super::message::{Alert, AlertState, Severity};
use crate::secret::Secret;
use async_trait::async_trait;
use std::time::Duration;

/// A channel's `timeout_seconds` (validated with the `[alerts]` table; an
/// out-of-range value given to a channel directly falls back to `default`).
fn timeout(secs: Option<f64>, default: f64) -> Duration {
    secs.and_then(|s| crate::duration::seconds(s, crate::duration::Range::at_least(0.001)).ok())
        .unwrap_or(Duration::from_secs_f64(default))
}

fn client(limit: Duration) -> reqwest::Client {
    crate::tls::install_crypto_provider();
    reqwest::Client::builder()
        .timeout(limit)
        .build()
        .unwrap_or_default()
}

async fn post(
    client: &reqwest::Client,
    url: &Secret,
    headers: &[(String, Secret)],
    body: &serde_json::Value,
) -> Result<(), String> {
    let mut req = client.post(url.expose()).json(body);
    for (k, v) in headers {
        req = req.header(k, v.expose());
    }
    // reqwest's errors name the full URL, token and all: drop it, and redact
    // what is left in case a cause quotes it again.
    let resp = req.send().await.map_err(|e| {
        let e = e.without_url();
        let mut text = format!("POST {}: {e}", url.redacted());
        let mut cause = std::error::Error::source(&e);
        while let Some(c) = cause {
            text = format!("{text}: {c}");
            cause = c.source();
        }
        crate::secret::redact(&text)
    })?;
    let status = resp.status();
    if status.is_success() {
        Ok(())
    } else {
        let text = resp.text().await.unwrap_or_default();
        Err(format!(
            "POST {} answered {status}: {}",
            url.redacted(),
            crate::secret::redact(&text.chars().take(200).collect::<String>())
        ))
    }
}

/// The generic webhook: the [`Alert`] as JSON, plus `message`.
#[derive(Debug)]
pub struct WebhookChannel {
    url: Secret,
    headers: Vec<(String, Secret)>,
    client: reqwest::Client,
}

impl WebhookChannel {
    /// From `[alerts.channels.webhook]` (validated: `url` is set).
    pub fn new(c: &WebhookConfig) -> Self {
        Self {
            url: c.url.clone().unwrap_or_default(),
            headers: c.headers.clone().into_iter().collect(),
            client: client(timeout(c.timeout_seconds, 5.0)),
        }
    }
}

#[async_trait]
impl Channel for WebhookChannel {
    fn name(&self) -> &str {
        "webhook"
    }

    async fn send(&self, alert: &Alert) -> Result<(), String> {
        let mut body = serde_json::to_value(alert).map_err(|e| e.to_string())?;
        body["message"] = serde_json::Value::String(alert.summary());
        post(&self.client, &self.url, &self.headers, &body).await
    }
}

/// A Slack incoming webhook: `text` plus a `blocks` section.
#[derive(Debug)]
pub struct SlackChannel {
    url: Secret,
    client: reqwest::Client,
}

impl SlackChannel {
    /// From `[alerts.channels.slack]` (validated: `webhook_url` is set).
    pub fn new(c: &SlackConfig) -> Self {
        Self {
            url: c.webhook_url.clone().unwrap_or_default(),
            client: client(timeout(c.timeout_seconds, 5.0)),
        }
    }
}

#[async_trait]
impl Channel for SlackChannel {
    fn name(&self) -> &str {
        "slack"
    }

    async fn send(&self, a: &Alert) -> Result<(), String> {
        let icon = match (a.state, a.severity) {
            (AlertState::Resolved, _) => ":white_check_mark:",
            (_, Severity::Warning) => ":warning:",
            (_, Severity::Critical) => ":rotating_light:",
        };
        let text = format!("{icon} {}", a.summary());
        let body = serde_json::json!({
            "text": text,
            "blocks": [
                {"type": "section", "text": {"type": "mrkdwn", "text": format!("*{}*", text)}},
                {"type": "context", "elements": [{"type": "mrkdwn", "text": format!(
                    "limiter `{}` · {} · value {:.2} · threshold {:.2}",
                    a.limiter, a.alert.as_str(), a.value, a.threshold
                )}]}
            ]
        });
        post(&self.client, &self.url, &[], &body).await
    }
}

/// PagerDuty Events API v2: `trigger` while firing, `resolve` on recovery,
/// with one dedup key per (limiter, alert).
#[derive(Debug)]
pub struct PagerDutyChannel {
    url: Secret,
    routing_key: Secret,
    client: reqwest::Client,
}

impl PagerDutyChannel {
    /// From `[alerts.channels.pagerduty]` (validated: `routing_key` is set).
    pub fn new(c: &PagerDutyConfig) -> Self {
        Self {
            url: c
                .url
                .clone()
                .unwrap_or_else(|| "https://events.pagerduty.com/v2/enqueue".into()),
            routing_key: c.routing_key.clone().unwrap_or_default(),
            client: client(timeout(c.timeout_seconds, 5.0)),
        }
    }
}

#[async_trait]
impl Channel for PagerDutyChannel {
    fn name(&self) -> &str {
        "pagerduty"
    }

    async fn send(&self, a: &Alert) -> Result<(), String> {
        let body = match a.state {
            AlertState::Firing => serde_json::json!({
                "routing_key": self.routing_key.expose(),
                "event_action": "trigger",
                "dedup_key": a.dedup_key(),
                "payload": {
                    "summary": a.summary(),
                    "source": hostname(),
                    "severity": a.severity.as_str(),
                    "component": a.limiter,
                    "class": a.alert.as_str(),
                    "custom_details": {"value": a.value, "threshold": a.threshold},
                }
            }),
            AlertState::Resolved => serde_json::json!({
                "routing_key": self.routing_key.expose(),
                "event_action": "resolve",
                "dedup_key": a.dedup_key(),
            }),
        };
        post(&self.client, &self.url, &[], &body).await
    }
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "ratesync".to_string())
}

/// Email over SMTP (STARTTLS unless `starttls = false`).
pub struct EmailChannel {
    transport: lettre::AsyncSmtpTransport<lettre::Tokio1Executor>,
    from: lettre::message::Mailbox,
    to: Vec<lettre::message::Mailbox>,
}

impl std::fmt::Debug for EmailChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmailChannel")
            .field("to", &self.to)
            .finish()
    }
}

impl EmailChannel {
    /// From `[alerts.channels.email]`; Err names the address or host at fault.
    pub fn new(c: &EmailConfig) -> Result<Self, String> {
        use lettre::transport::smtp::authentication::Credentials;
        use lettre::AsyncSmtpTransport;
        let host = c.smtp_host.clone().unwrap_or_default();
        let port = c.smtp_port.unwrap_or(587);
        let mut builder = if c.starttls {
            crate::tls::install_crypto_provider();
            AsyncSmtpTransport::<lettre::Tokio1Executor>::starttls_relay(&host)
                .map_err(|e| format!("alerts.channels.email.smtp_host {host:?}: {e}"))?
        } else {
            AsyncSmtpTransport::<lettre::Tokio1Executor>::builder_dangerous(&host)
        }
        .port(port)
        .timeout(Some(timeout(c.timeout_seconds, 10.0)));
        if let (Some(u), Some(p)) = (&c.username, &c.password) {
            builder = builder.credentials(Credentials::new(u.clone(), p.expose().to_string()));
        }
        let parse = |field: &str, v: &str| {
            v.parse::<lettre::message::Mailbox>()
                .map_err(|e| format!("alerts.channels.email.{field}: {v:?} is not an address: {e}"))
        };
        Ok(Self {
            transport: builder.build(),
            from: parse("from", c.from.as_deref().unwrap_or(""))?,
            to: c
                .to
                .iter()
                .map(|t| parse("to", t))
                .collect::<Result<_, _>>()?,
        })
    }
}

#[async_trait]
impl Channel for EmailChannel {
    fn name(&self) -> &str {
        "email"
    }

    async fn send(&self, a: &Alert) -> Result<(), String> {
        use lettre::AsyncTransport;
        let mut message = lettre::Message::builder()
            .from(self.from.clone())
            .subject(a.summary());
        for to in &self.to {
            message = message.to(to.clone());
        }
        let body = format!(
            "{}\n\nlimiter:   {}\nalert:     {}\nseverity:  {}\nvalue:     {:.3}\nthreshold: {:.3}\nstate:     {:?}\n",
            a.summary(),
            a.limiter,
            a.alert.as_str(),
            a.severity.as_str(),
            a.value,
            a.threshold,
            a.state
        );
        let message = message.body(body).map_err(|e| e.to_string())?;
        self.transport
            .send(message)
            .await
            .map(|_| ())
            .map_err(|e| crate::secret::redact(&format!("SMTP: {e}")))
    }
}
