//! Where alerts go: the [`Channel`] trait and the `log` channel.

use super::message::{Alert, AlertState, Severity};
use async_trait::async_trait;

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
