//! The background writer: takes batches from the queue, writes them, and
//! holds a batch the sink refused until it is written; cleans up on its
//! schedule. It never blocks a check: the queue between them is the bound.

use super::Inner;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Weak;
use std::time::Duration;

/// The longest pause between retries of a refused batch.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

pub(super) async fn run(inner: Weak<Inner>) {
    let mut batch = Vec::new();
    let mut next_cleanup = tokio::time::Instant::now();
    loop {
        let Some(i) = inner.upgrade() else { return };
        if i.closed.load(Relaxed) {
            return;
        }
        if batch.is_empty() {
            i.queue.take(&mut batch, i.settings.batch);
        }
        if batch.is_empty() {
            if tokio::time::Instant::now() >= next_cleanup {
                next_cleanup = tokio::time::Instant::now() + i.settings.cleanup_interval;
                cleanup(&i).await;
            }
            // Asleep at most a flush interval: once the last handle is
            // gone, the next upgrade fails and the writer ends.
            tokio::select! {
                _ = i.wake.notified() => {}
                _ = tokio::time::sleep(i.settings.flush_interval) => {}
            }
            continue;
        }
        write(&i, &mut batch).await;
    }
}

/// Writes `batch`, retrying with backoff until it is written (or the log closes).
async fn write(i: &Inner, batch: &mut Vec<super::DecisionEvent>) {
    let mut backoff = Duration::from_millis(50);
    loop {
        match i.sink.write(batch).await {
            Ok(new) => {
                let n = batch.len() as u64;
                i.stats.written.fetch_add(new, Relaxed);
                i.stats.duplicates.fetch_add(n.saturating_sub(new), Relaxed);
                batch.clear();
                return;
            }
            Err(e) => {
                let failures = i.stats.write_failures.fetch_add(1, Relaxed) + 1;
                // Every failure counted; one in 20 logged after the first
                // few, so an outage does not flood the log.
                if failures <= 3 || failures.is_multiple_of(20) {
                    tracing::warn!(sink = i.sink.kind(), error = %e, failures,
                        held = batch.len(),
                        "decision log write failed; the batch is held and retried");
                }
                *i.stats.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                if i.closed.load(Relaxed) {
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

async fn cleanup(i: &Inner) {
    let s = &i.settings;
    match i
        .cleanup_older(s.retention, s.rollup_retention, s.cleanup_batch)
        .await
    {
        Ok(c) => {
            if c.events + c.rollups > 0 {
                tracing::info!(
                    sink = i.sink.kind(),
                    events = c.events,
                    rollups = c.rollups,
                    "decision log retention deleted old rows"
                );
            }
        }
        Err(e) => tracing::warn!(sink = i.sink.kind(), error = %e,
            "decision log cleanup failed; retried at the next interval"),
    }
}
