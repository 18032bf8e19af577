//! The Postgres store's settings, checked at load.

use crate::config::store::{SettingError, StoreConfig};
use crate::duration::{seconds, Range};
use crate::quota::LimiterSpec;
use crate::secret::redact;

/// Postgres engine settings: a URL or key=value DSN, a pool of at least
/// one connection, a plain lower-case schema name, and a sweep interval.
pub(crate) fn check_settings(store: &StoreConfig) -> Result<(), SettingError> {
    if let Some(t) = store.sweep_seconds {
        // A sweep less often than every 10 ms is all a sweep needs.
        seconds(t, Range::at_least(0.01)).map_err(|m| ("sweep_seconds", m))?;
    }
    if store.pool_size == Some(0) {
        return Err(("pool_size", "must be >= 1, got 0".into()));
    }
    if let Some(schema) = &store.schema {
        let mut chars = schema.chars();
        let valid = chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
            && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            && schema.len() <= 50;
        if !valid {
            return Err((
                "schema",
                format!("must be a lower-case SQL name ([a-z_][a-z0-9_]*, at most 50 characters), got {schema:?}"),
            ));
        }
    }
    let url = store.required_url(
        "url = \"postgres://user@127.0.0.1:5432/app\" (or dsn = \"host=... dbname=...\")",
    )?;
    url.parse::<tokio_postgres::Config>().map_err(|e| {
        (
            "url",
            format!(
                "is not a valid PostgreSQL URL or key=value DSN ({e}): {:?}",
                redact(url)
            ),
        )
    })?;
    Ok(())
}

/// Postgres computes in whole microseconds: faster token buckets are refused.
pub(crate) fn check_limiter(spec: &LimiterSpec, store: &StoreConfig) -> Result<(), SettingError> {
    crate::engine::check_microsecond_rate(spec, store)
}
