//! A `[stores.NAME]` table: which engine, where it is, and the settings
//! every engine shares. Each engine checks its own settings (`engine::*::settings`).

use crate::duration::{seconds, Range};
use serde::Deserialize;
use std::time::Duration;

/// A lease must outlast a renewal sent a third of the way into it and
/// answered within the store's `response_timeout`: at least this many
/// response timeouts long.
pub const LEASE_PER_RESPONSE_TIMEOUT: f64 = 1.5;

/// The backends a store can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// In-process state: one process, no service needed.
    Memory,
    /// Redis, with atomic Lua scripts.
    Redis,
    /// NATS JetStream key-value, with compare-and-set.
    Nats,
    /// PostgreSQL, one statement per decision.
    Postgres,
}

impl EngineKind {
    /// The name used in configuration files.
    pub fn as_str(self) -> &'static str {
        match self {
            EngineKind::Memory => "memory",
            EngineKind::Redis => "redis",
            EngineKind::Nats => "nats",
            EngineKind::Postgres => "postgres",
        }
    }
}

/// A `[stores.NAME]` table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// Which backend.
    pub engine: EngineKind,
    /// Where the backend is (not for `memory`). Postgres also takes it as
    /// `dsn`, in URL or `key=value` form.
    #[serde(default, alias = "dsn")]
    pub url: Option<crate::secret::Secret>,
    /// Namespace inside the backend (default `ratesync`).
    #[serde(default)]
    pub key_prefix: Option<String>,
    /// Seconds a backend request may take before it counts as failed (default 2).
    #[serde(default)]
    pub response_timeout: Option<f64>,
    /// Seconds the first connection and its set-up (schema, bucket, clock
    /// probe) may take before loading the store fails (default 10).
    #[serde(default)]
    pub connect_timeout: Option<f64>,
    /// Postgres: connections in the pool (default 8).
    #[serde(default)]
    pub pool_size: Option<u32>,
    /// Postgres: the schema holding ratesync's tables and functions (default `ratesync`).
    #[serde(default)]
    pub schema: Option<String>,
    /// Postgres: seconds between sweeps of idle rows (default 30).
    #[serde(default)]
    pub sweep_seconds: Option<f64>,
    /// Postgres with `sslmode=require`, NATS with `tls://`, Redis with
    /// `rediss://`: a PEM file of CA certificates to trust (a private CA, a
    /// self-signed server).
    #[serde(default)]
    pub tls_ca_file: Option<String>,
    /// NATS: the JetStream key-value bucket (default `ratesync`), created at
    /// connect when absent.
    #[serde(default)]
    pub bucket: Option<String>,
    /// NATS: compare-and-set conflicts in a row before a decision fails (default 64).
    #[serde(default)]
    pub max_cas_retries: Option<u32>,
    /// Redis, Postgres, NATS: decide this process's concurrent requests of
    /// one key in one round trip (default true; docs/design.md, Coalescing).
    #[serde(default)]
    pub coalesce: Option<bool>,
    /// Redis: replicas that must acknowledge a decision's write before it is
    /// answered, so a failover cannot forget a grant (default 1 on a
    /// `redis+cluster://` url, 0 otherwise).
    #[serde(default)]
    pub replica_acks: Option<u32>,
    /// NATS: a `.creds` file (JWT and NKey seed) to authenticate with.
    #[serde(default)]
    pub credentials_file: Option<String>,
    /// NATS: seconds an untouched key is kept (the bucket's max age, default
    /// 86,400). Must outlast every limiter's state; checked at load.
    #[serde(default)]
    pub max_age_seconds: Option<f64>,
    /// Shifts this process's clock by this many milliseconds, to test how an
    /// engine copes with skewed hosts. Engines that read the backend's clock
    /// (memory, Redis, Postgres) are unaffected by it by construction.
    #[serde(default)]
    pub clock_offset_ms: Option<i64>,
}

impl StoreConfig {
    /// The namespace inside the backend.
    pub fn prefix(&self) -> &str {
        self.key_prefix.as_deref().unwrap_or("ratesync")
    }

    /// The bound on one backend request.
    pub fn response_timeout(&self) -> Duration {
        self.response_timeout
            .and_then(|s| seconds(s, Range::POSITIVE).ok())
            .unwrap_or(Duration::from_secs(2))
    }

    /// The bound on connecting at start-up. Longer than a request's bound:
    /// a server that has just started (or a busy CI host) can take seconds
    /// to finish a TLS handshake or create a JetStream bucket, and failing
    /// the whole registry for that helps nobody.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
            .and_then(|s| seconds(s, Range::POSITIVE).ok())
            .unwrap_or(Duration::from_secs(10))
    }

    /// Postgres: connections in the pool.
    pub fn pool_size(&self) -> usize {
        self.pool_size.map_or(8, |n| n.max(1) as usize)
    }

    /// Postgres: the schema name.
    pub fn schema(&self) -> &str {
        self.schema.as_deref().unwrap_or("ratesync")
    }

    /// NATS: the bucket name.
    pub fn bucket(&self) -> &str {
        self.bucket.as_deref().unwrap_or("ratesync")
    }

    /// Redis, Postgres, NATS: whether concurrent requests of one key are
    /// coalesced.
    pub fn coalesce(&self) -> bool {
        self.coalesce.unwrap_or(true)
    }

    /// NATS: compare-and-set conflicts in a row before a decision fails.
    pub fn max_cas_retries(&self) -> u32 {
        self.max_cas_retries
            .unwrap_or(DEFAULT_MAX_CAS_RETRIES)
            .max(1)
    }

    /// NATS: how long an untouched key is kept.
    pub fn max_age(&self) -> Duration {
        self.max_age_seconds
            .and_then(|s| seconds(s, Range::POSITIVE).ok())
            .unwrap_or(Duration::from_secs(86_400))
    }

    /// Postgres: the time between sweeps of idle rows.
    pub fn sweep_interval(&self) -> Duration {
        self.sweep_seconds
            .and_then(|s| seconds(s, Range::POSITIVE).ok())
            .unwrap_or(Duration::from_secs(30))
    }
}

impl StoreConfig {
    /// An in-memory store.
    pub fn memory() -> Self {
        Self {
            engine: EngineKind::Memory,
            url: None,
            key_prefix: None,
            response_timeout: None,
            connect_timeout: None,
            pool_size: None,
            schema: None,
            sweep_seconds: None,
            tls_ca_file: None,
            bucket: None,
            max_cas_retries: None,
            coalesce: None,
            replica_acks: None,
            credentials_file: None,
            max_age_seconds: None,
            clock_offset_ms: None,
        }
    }
}

/// A store setting at fault: the key (under the store's or limiter's table;
/// empty for the table itself) and what is wrong with it.
pub(crate) type SettingError = (&'static str, String);

impl EngineKind {
    /// The settings only some engines take; each engine names its own here.
    pub fn own_settings(self) -> &'static [&'static str] {
        match self {
            EngineKind::Memory => &[],
            EngineKind::Redis => &["tls_ca_file", "coalesce", "replica_acks"],
            EngineKind::Postgres => &[
                "pool_size",
                "schema",
                "sweep_seconds",
                "tls_ca_file",
                "coalesce",
            ],
            EngineKind::Nats => &[
                "tls_ca_file",
                "coalesce",
                "bucket",
                "max_cas_retries",
                "credentials_file",
                "max_age_seconds",
            ],
        }
    }

    /// In the order error messages list them.
    const ALL: [EngineKind; 4] = [
        EngineKind::Memory,
        EngineKind::Postgres,
        EngineKind::Nats,
        EngineKind::Redis,
    ];
}

impl StoreConfig {
    /// The checks every store passes whatever its engine: the key prefix,
    /// the timeouts, and no setting that belongs to another engine.
    pub(crate) fn check_shared(&self) -> Result<(), SettingError> {
        if let Some(p) = &self.key_prefix {
            // Kept to characters that are literal in Redis patterns and NATS subjects.
            if p.is_empty()
                || !p
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:/".contains(&b))
            {
                return Err((
                    "key_prefix",
                    format!("may contain only letters, digits and - _ . : /, got {p:?}"),
                ));
            }
        }
        // A request needs a millisecond on the fastest loopback.
        for (key, value) in [
            ("response_timeout", self.response_timeout),
            ("connect_timeout", self.connect_timeout),
        ] {
            if let Some(t) = value {
                seconds(t, Range::at_least(0.001)).map_err(|m| (key, m))?;
            }
        }
        let set: [(&'static str, bool); 10] = [
            ("pool_size", self.pool_size.is_some()),
            ("schema", self.schema.is_some()),
            ("sweep_seconds", self.sweep_seconds.is_some()),
            ("tls_ca_file", self.tls_ca_file.is_some()),
            ("bucket", self.bucket.is_some()),
            ("max_cas_retries", self.max_cas_retries.is_some()),
            ("coalesce", self.coalesce.is_some()),
            ("replica_acks", self.replica_acks.is_some()),
            ("credentials_file", self.credentials_file.is_some()),
            ("max_age_seconds", self.max_age_seconds.is_some()),
        ];
        for (key, _) in set.iter().filter(|(_, set)| *set) {
            if !self.engine.own_settings().contains(key) {
                let owners: Vec<&str> = EngineKind::ALL
                    .iter()
                    .filter(|e| e.own_settings().contains(key))
                    .map(|e| e.as_str())
                    .collect();
                return Err((
                    key,
                    format!(
                        "applies only to engine `{}`, this store's engine is `{}`; remove it",
                        owners.join("` or `"),
                        self.engine.as_str()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// What an engine connects with: the url as written and its redacted
    /// form, the only one that may appear in messages and `Debug` output.
    #[cfg_attr(
        not(any(feature = "redis", feature = "postgres", feature = "nats")),
        allow(dead_code)
    )]
    pub(crate) fn connect_url(&self) -> (String, String) {
        let url = self
            .url
            .as_ref()
            .map(|u| u.expose().to_string())
            .unwrap_or_default();
        let redacted = crate::secret::redact(&url);
        (url, redacted)
    }

    /// The url as written, and the error when an engine that needs one has none.
    #[cfg_attr(
        not(any(feature = "redis", feature = "postgres", feature = "nats")),
        allow(dead_code)
    )]
    pub(crate) fn required_url(&self, example: &str) -> Result<&str, SettingError> {
        self.url.as_ref().map(|u| u.expose()).ok_or_else(|| {
            (
                "url",
                format!(
                    "is required for engine `{}`, e.g. {example}",
                    self.engine.as_str()
                ),
            )
        })
    }
}

/// A network store's lease must outlast one renewal (see [`LEASE_PER_RESPONSE_TIMEOUT`]).
pub(crate) fn check_lease(
    spec: &crate::quota::LimiterSpec,
    store: &StoreConfig,
) -> Result<(), SettingError> {
    let Some(c) = spec.concurrency else {
        return Ok(());
    };
    if store.engine == EngineKind::Memory {
        return Ok(());
    }
    let needed = store.response_timeout().mul_f64(LEASE_PER_RESPONSE_TIMEOUT);
    if c.lease < needed {
        return Err((
            "lease_seconds",
            format!(
                "must be at least {:.3} s with store `{}` ({LEASE_PER_RESPONSE_TIMEOUT} x its response_timeout of {:.3} s, so a renewal sent a third of the way into the lease is answered before it ends), got {:.3}; raise lease_seconds or lower response_timeout",
                needed.as_secs_f64(),
                spec.store,
                store.response_timeout().as_secs_f64(),
                c.lease.as_secs_f64()
            ),
        ));
    }
    Ok(())
}

/// Compare-and-set conflicts in a row before a NATS decision fails. With
/// coalescing, each conflict is a race lost to another *process* (one batch
/// per process in flight), and a process that keeps winning on its cached
/// revision can shut the others out for a while: at 25,000/s on one key from
/// 3 processes × 16 tasks, 16 in a row happened 355 times in 10 s, 64 never
/// (four runs, `docs/scaling.md`).
pub const DEFAULT_MAX_CAS_RETRIES: u32 = 64;
