//! The alert loop on a limiter that is too tight for its load: mean waits and
//! timeouts cross their thresholds, alerts go out (here to stdout through a
//! channel of our own, beside the built-in `log` channel), then, when the load
//! stops, recovery notices follow. Run with `cargo run --example metrics_alert`.
//!
//! The thresholds come from the environment, as in production:
//! `RATESYNC_ALERT_INTERVAL` (seconds between checks, default 5),
//! `RATESYNC_MAX_AVG_WAIT_MS` (critical mean wait, default 1500) and
//! `RATESYNC_MAX_TIMEOUTS` (timeouts per interval, default 3). The run lasts
//! about five intervals; `RATESYNC_ALERT_INTERVAL=1` makes it quick.

use async_trait::async_trait;
use ratesync::alert::{Alert, AlertConfig, AlertLoop, Channel};
use ratesync::{LimiterConfig, Registry};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Prints every alert; a real deployment would page, post or mail instead.
struct Stdout(Instant);

#[async_trait]
impl Channel for Stdout {
    fn name(&self) -> &str {
        "stdout"
    }

    async fn send(&self, alert: &Alert) -> Result<(), String> {
        println!(
            "{:>5.1} s  {}",
            self.0.elapsed().as_secs_f64(),
            alert.summary()
        );
        Ok(())
    }
}

#[tokio::main]
async fn main() -> ratesync::Result<()> {
    let config = AlertConfig {
        cooldown_seconds: 60.0,
        ..AlertConfig::default()
    }
    .with_env_overrides()?;
    println!(
        "checking every {} s: critical mean wait {} ms, warning at {} timeouts per interval",
        config.interval_seconds,
        config.thresholds.avg_wait_ms_critical,
        config.thresholds.timeouts_per_interval
    );

    // 10 permits a second with a 3 s timeout, asked for by 40 tasks: waits
    // approach the timeout and many requests time out.
    let registry = Registry::new();
    let search = registry.register(
        "search",
        LimiterConfig::token_bucket(10.0, 2).with_timeout(Duration::from_secs(3)),
    )?;
    let interval = Duration::from_secs_f64(config.interval_seconds);
    let start = Instant::now();
    let alerts = AlertLoop::new(registry.clone(), config)?
        .with_channel(Arc::new(Stdout(start)))
        .spawn();

    let load_until = start + interval.mul_f64(2.5);
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let search = search.clone();
        tasks.push(tokio::spawn(async move {
            while Instant::now() < load_until {
                if search.acquire().await.is_err() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("load task");
    }
    println!("{:>5.1} s  load stopped", start.elapsed().as_secs_f64());
    // A light load that fits the limit: the conditions clear.
    let quiet_until = Instant::now() + interval.mul_f64(2.2);
    while Instant::now() < quiet_until {
        let _permit = search.acquire().await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    alerts.abort();

    let m = search.metrics();
    println!(
        "search: {} granted, {} timed out, mean wait {:.0} ms, max wait {:.0} ms",
        m.total_acquisitions, m.timeouts, m.avg_wait_time_ms, m.max_wait_time_ms
    );
    Ok(())
}
