//! The KV bucket: opened, or created as its stream when absent, and kept
//! at least as old as the store's `max_age_seconds`.

use async_nats::jetstream::{self, kv, stream};
use std::time::Duration;

/// Opens the bucket, creating its stream with the KV settings when absent.
/// Creating the stream directly (rather than `create_key_value`) works on
/// nats-server 2.9, whose account info lacks fields newer clients expect.
pub(super) async fn open_bucket(
    js: &jetstream::Context,
    bucket: &str,
    max_age: Duration,
) -> Result<kv::Store, String> {
    if let Ok(store) = js.get_key_value(bucket).await {
        ensure_max_age(js, bucket, max_age).await?;
        return Ok(store);
    }
    let config = stream::Config {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        discard: stream::DiscardPolicy::New,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        max_age,
        duplicate_window: max_age.min(Duration::from_secs(120)),
        storage: stream::StorageType::File,
        num_replicas: 1,
        ..Default::default()
    };
    if let Err(e) = js.create_stream(config).await {
        // Another process may have created it in the meantime.
        tracing::debug!(error = %e, bucket, "creating the KV stream failed; opening it instead");
    }
    js.get_key_value(bucket)
        .await
        .map_err(|e| format!("cannot open or create bucket {bucket}: {e}"))
}

/// An existing bucket that forgets keys sooner than `max_age_seconds` says
/// would forget reservations the engine made in good faith: it is raised to
/// the configured age, or the store is refused naming both values. A longer
/// age than configured is kept (state then lives longer, which is safe).
async fn ensure_max_age(
    js: &jetstream::Context,
    bucket: &str,
    max_age: Duration,
) -> Result<(), String> {
    let name = format!("KV_{bucket}");
    let mut stream = js
        .get_stream(&name)
        .await
        .map_err(|e| format!("cannot read the settings of bucket {bucket}: {e}"))?;
    let info = stream
        .info()
        .await
        .map_err(|e| format!("cannot read the settings of bucket {bucket}: {e}"))?;
    let current = info.config.max_age;
    if current.is_zero() || current >= max_age {
        return Ok(());
    }
    let mut config = info.config.clone();
    config.max_age = max_age;
    match js.update_stream(config).await {
        Ok(_) => {
            tracing::info!(bucket, from_s = current.as_secs_f64(), to_s = max_age.as_secs_f64(),
                "raised the bucket's max age to max_age_seconds");
            Ok(())
        }
        Err(e) => Err(format!(
            "bucket {bucket} keeps keys for {:.0} s, but max_age_seconds = {:.0}, and raising it failed ({e}); \
             raise the bucket's max age (nats kv edit / stream edit KV_{bucket}) or lower max_age_seconds to {:.0}",
            current.as_secs_f64(),
            max_age.as_secs_f64(),
            current.as_secs_f64()
        )),
    }
}
