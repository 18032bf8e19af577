//! The TOML configuration: schema, `${VAR}` expansion and validation into limiter policies.
//!
//! ```toml
//! [stores.main]
//! engine = "memory"
//!
//! [limiters.api]
//! store = "main"
//! rate_per_second = 100.0
//! burst = 20
//! max_concurrent = 8
//! timeout = 5.0
//! ```
//!
//! Parsing happens in two steps so that every error names the table and key
//! at fault: the text is read as a generic TOML table (syntax errors carry a
//! line and column), then each store and limiter is deserialised on its own
//! and validated.

use crate::duration::{seconds, Range};
use crate::error::ConfigError;
use crate::gcra::Gcra;
use crate::window::SlidingWindow;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The name of the in-memory store every registry has unless the
/// configuration defines a store of that name itself.
pub const DEFAULT_STORE: &str = "memory";

/// The default lease of a concurrency slot whose holder vanished.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// The highest token-bucket rate: one grant per nanosecond, the finest the
/// engines' clocks tell apart.
pub const MAX_RATE: f64 = 1e9;

/// Engines that compute in whole microseconds (Redis and PostgreSQL) take
/// token-bucket rates up to this; a faster rate would round to it silently.
pub const MAX_RATE_MICROSECOND_ENGINES: f64 = 1e6;

/// NATS keeps a sliding window's grants in one KV value (8 bytes each)
/// under the server's 1 MiB payload limit.
pub const MAX_NATS_WINDOW_LIMIT: u32 = 100_000;

/// NATS keeps a key's holders in one KV value (about 40 bytes each).
pub const MAX_NATS_CONCURRENT: u32 = 20_000;

/// The shortest lease any store accepts. A holder renews every third of its
/// lease; below a second, a descheduled process or a GC pause outlives the
/// lease and a second holder gets the slot while the first still works.
pub const MIN_LEASE: Duration = Duration::from_secs(1);

/// A lease must outlast a renewal sent a third of the way into it and
/// answered within the store's `response_timeout`: at least this many
/// response timeouts long.
pub const LEASE_PER_RESPONSE_TIMEOUT: f64 = 1.5;

/// A whole configuration: stores and limiters.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// Connections by name.
    pub stores: BTreeMap<String, StoreConfig>,
    /// Limiters by name, already validated.
    pub limiters: BTreeMap<String, LimiterSpec>,
    /// Where the configuration came from (a path or `<string>`), for messages.
    pub source_name: String,
    /// The `[alerts]` table, if any (see [`crate::alert`]).
    pub alerts: Option<crate::alert::AlertConfig>,
}

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
    /// NATS: compare-and-set attempts per decision before it fails (default 16).
    #[serde(default)]
    pub max_cas_retries: Option<u32>,
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

    /// NATS: compare-and-set attempts per decision.
    pub fn max_cas_retries(&self) -> u32 {
        self.max_cas_retries.unwrap_or(16).max(1)
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
            credentials_file: None,
            max_age_seconds: None,
            clock_offset_ms: None,
        }
    }
}

/// How a rate is limited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// Token bucket (GCRA): `rate_per_second` with bursts up to `burst`.
    #[default]
    #[serde(alias = "gcra")]
    TokenBucket,
    /// Exact sliding window: never more than `limit` in any `window_seconds`.
    SlidingWindow,
}

/// What a limiter does when its store fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    /// Deny with [`Error::Backend`](crate::Error::Backend).
    #[default]
    FailClosed,
    /// Admit, count the error and log it.
    FailOpen,
}

impl FailureMode {
    /// The name used in configuration files.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureMode::FailClosed => "fail_closed",
            FailureMode::FailOpen => "fail_open",
        }
    }
}

/// A `[limiters.NAME]` table as written, before validation.
///
/// Also the way to register a limiter from code: fill in the fields and pass
/// it to [`Registry::register`](crate::Registry::register), which validates it
/// exactly like a file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimiterConfig {
    /// The store holding this limiter's state (default: the built-in `memory`).
    pub store: Option<String>,
    /// `token_bucket` (default) or `sliding_window`.
    pub algorithm: Option<Algorithm>,
    /// Token bucket: tokens per second.
    pub rate_per_second: Option<f64>,
    /// Token bucket: the largest burst (default 1).
    pub burst: Option<i64>,
    /// Sliding window: grants allowed in any window.
    pub limit: Option<i64>,
    /// Sliding window: the window's length in seconds.
    pub window_seconds: Option<f64>,
    /// Concurrency slots (optional; may be combined with a rate).
    pub max_concurrent: Option<i64>,
    /// Seconds after which the slot of a vanished holder is freed (default 30).
    pub lease_seconds: Option<f64>,
    /// Default bound for `acquire()` in seconds; absent = wait forever.
    pub timeout: Option<f64>,
    /// `fail_closed` (default) or `fail_open`.
    pub on_backend_error: Option<FailureMode>,
}

impl LimiterConfig {
    /// A token bucket of `rate_per_second` with bursts up to `burst`.
    pub fn token_bucket(rate_per_second: f64, burst: u32) -> Self {
        Self {
            rate_per_second: Some(rate_per_second),
            burst: Some(i64::from(burst)),
            ..Self::default()
        }
    }

    /// An exact sliding window of `limit` grants per `window`.
    pub fn sliding_window(limit: u32, window: Duration) -> Self {
        Self {
            algorithm: Some(Algorithm::SlidingWindow),
            limit: Some(i64::from(limit)),
            window_seconds: Some(window.as_secs_f64()),
            ..Self::default()
        }
    }

    /// A pure concurrency limiter of `max` slots.
    pub fn concurrency(max: u32) -> Self {
        Self {
            max_concurrent: Some(i64::from(max)),
            ..Self::default()
        }
    }

    /// Adds a concurrency cap of `max` slots.
    pub fn with_max_concurrent(mut self, max: u32) -> Self {
        self.max_concurrent = Some(i64::from(max));
        self
    }

    /// Sets the default bound of `acquire()`.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout.as_secs_f64());
        self
    }

    /// Sets the store.
    pub fn with_store(mut self, store: impl Into<String>) -> Self {
        self.store = Some(store.into());
        self
    }

    /// Sets the failure mode.
    pub fn with_failure_mode(mut self, mode: FailureMode) -> Self {
        self.on_backend_error = Some(mode);
        self
    }

    /// Sets the lease of concurrency slots.
    pub fn with_lease(mut self, lease: Duration) -> Self {
        self.lease_seconds = Some(lease.as_secs_f64());
        self
    }
}

/// A rate policy, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RateSpec {
    /// Token bucket / GCRA.
    TokenBucket(Gcra),
    /// Exact sliding window.
    SlidingWindow(SlidingWindow),
}

impl RateSpec {
    /// How long the state of one grant matters after the slot it was
    /// reserved for: a bucket until it is full again, a window until the
    /// grant has left it.
    pub fn state_lifetime(&self) -> Duration {
        match self {
            RateSpec::TokenBucket(g) => {
                Duration::from_nanos(g.emission_ns().saturating_mul(u64::from(g.burst())))
            }
            RateSpec::SlidingWindow(w) => Duration::from_nanos(w.window_ns()),
        }
    }
}

/// A concurrency policy, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConcurrencySpec {
    /// Slots.
    pub max: u32,
    /// How long a slot outlives a holder that stopped renewing it.
    pub lease: Duration,
}

/// A limiter's validated policy.
#[derive(Debug, Clone, PartialEq)]
pub struct LimiterSpec {
    /// The store's name.
    pub store: String,
    /// The rate limit, if any.
    pub rate: Option<RateSpec>,
    /// The concurrency cap, if any.
    pub concurrency: Option<ConcurrencySpec>,
    /// Default bound of `acquire()`; `None` waits forever.
    pub timeout: Option<Duration>,
    /// What to do when the store fails.
    pub on_backend_error: FailureMode,
}

/// Reads environment variables; injectable so tests need not touch the process environment.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

impl Config {
    /// Parses configuration text (named `<string>` in errors), expanding `${VAR}`.
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        Self::parse(text, "<string>", &process_env)
    }

    /// Reads and parses the file at `path`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new(&name, "(file)", format!("cannot read the file: {e}")))?;
        Self::parse(&text, &name, &process_env)
    }

    /// Finds the configuration: `$RATESYNC_CONFIG`, else `./ratesync.toml`,
    /// else `./config.toml`.
    pub fn from_default_location() -> Result<Self, ConfigError> {
        let path = Self::default_location()?;
        Self::from_file(path)
    }

    /// The file [`from_default_location`](Self::from_default_location) would read.
    pub fn default_location() -> Result<PathBuf, ConfigError> {
        if let Some(p) = std::env::var_os("RATESYNC_CONFIG") {
            return Ok(PathBuf::from(p));
        }
        for candidate in ["ratesync.toml", "config.toml"] {
            if Path::new(candidate).is_file() {
                return Ok(PathBuf::from(candidate));
            }
        }
        Err(ConfigError::new(
            "(default configuration)",
            "(file)",
            "no configuration found: set RATESYNC_CONFIG to a file, or create ./ratesync.toml or ./config.toml",
        ))
    }

    /// Parses `text`, naming it `source_name` in errors and reading variables through `env`.
    pub fn parse(text: &str, source_name: &str, env: EnvLookup<'_>) -> Result<Self, ConfigError> {
        let expanded = expand_env(text, env)
            .map_err(|(line, msg)| ConfigError::new(source_name, format!("line {line}"), msg))?;
        let table: toml::Table = toml::from_str(&expanded).map_err(|e| {
            let at = e.span().map(|s| line_col(&expanded, s.start)).map_or_else(
                || "(syntax)".to_string(),
                |(l, c)| format!("line {l}, column {c}"),
            );
            ConfigError::new(source_name, at, e.message().to_string())
        })?;
        let mut config = Config {
            source_name: source_name.to_string(),
            ..Config::default()
        };
        let mut raw_limiters = BTreeMap::new();
        for (key, value) in table {
            match key.as_str() {
                "stores" => {
                    for (name, v) in sub_tables(source_name, "stores", v_table(value))? {
                        let path = format!("stores.{name}");
                        let store: StoreConfig = deserialize(source_name, &path, v)?;
                        validate_store(source_name, &path, &store)?;
                        config.stores.insert(name, store);
                    }
                }
                "limiters" => {
                    for (name, v) in sub_tables(source_name, "limiters", v_table(value))? {
                        let path = format!("limiters.{name}");
                        let lim: LimiterConfig = deserialize(source_name, &path, v)?;
                        raw_limiters.insert(name, lim);
                    }
                }
                "alerts" => {
                    let alerts: crate::alert::AlertConfig =
                        deserialize(source_name, "alerts", value)?;
                    alerts.validate(source_name)?;
                    config.alerts = Some(alerts);
                }
                other => {
                    return Err(ConfigError::new(
                        source_name,
                        other,
                        "unknown key; expected `stores`, `limiters` or `alerts`",
                    ))
                }
            }
        }
        for (name, lim) in raw_limiters {
            let spec = config.validate_limiter(&name, &lim)?;
            config.limiters.insert(name, spec);
        }
        Ok(config)
    }

    /// Validates one limiter against this configuration's stores.
    pub fn validate_limiter(
        &self,
        name: &str,
        lim: &LimiterConfig,
    ) -> Result<LimiterSpec, ConfigError> {
        let spec = validate_limiter(
            &self.source_name,
            name,
            lim,
            |s| s == DEFAULT_STORE || self.stores.contains_key(s),
            &self.stores.keys().cloned().collect::<Vec<_>>(),
        )?;
        if let Some(store) = self.stores.get(&spec.store) {
            check_against_store(&self.source_name, name, &spec, store)?;
        }
        Ok(spec)
    }
}

/// How long a limiter's state matters after its last change: a bucket until
/// it is full again, a window until its last grant left it, a lease until it
/// runs out.
pub fn state_lifetime(spec: &LimiterSpec) -> Duration {
    let rate = spec.rate.map_or(Duration::ZERO, |r| r.state_lifetime());
    rate.max(spec.concurrency.map_or(Duration::ZERO, |c| c.lease))
}

/// A store that forgets untouched keys (NATS KV's max age) must keep them
/// as long as their state matters, or a forgotten bucket would admit a burst.
fn check_state_lifetime(
    source: &str,
    name: &str,
    spec: &LimiterSpec,
    store: &StoreConfig,
) -> Result<(), ConfigError> {
    if store.engine != EngineKind::Nats {
        return Ok(());
    }
    let needed = state_lifetime(spec);
    if needed > store.max_age() {
        return Err(ConfigError::new(
            source,
            format!("limiters.{name}"),
            format!(
                "its state matters for {:.0} s after each change, longer than store `{}` keeps an untouched key (max_age_seconds = {:.0}); raise max_age_seconds",
                needed.as_secs_f64().ceil(),
                spec.store,
                store.max_age().as_secs_f64()
            ),
        ));
    }
    Ok(())
}

/// The checks of a limiter that depend on its store's settings, for files
/// and for limiters registered from code alike.
pub(crate) fn check_against_store(
    source: &str,
    name: &str,
    spec: &LimiterSpec,
    store: &StoreConfig,
) -> Result<(), ConfigError> {
    check_state_lifetime(source, name, spec, store)?;
    check_lease(source, name, spec, store)?;
    check_engine_range(source, name, spec, store)
}

/// What one engine cannot store exactly is refused, naming the field and
/// the supported range, rather than rounded or left to fail per request.
fn check_engine_range(
    source: &str,
    name: &str,
    spec: &LimiterSpec,
    store: &StoreConfig,
) -> Result<(), ConfigError> {
    let err =
        |key: &str, msg: String| ConfigError::new(source, format!("limiters.{name}.{key}"), msg);
    let engine = store.engine.as_str();
    match (store.engine, spec.rate) {
        (EngineKind::Redis | EngineKind::Postgres, Some(RateSpec::TokenBucket(g)))
            if g.emission_ns() < 1_000 =>
        {
            return Err(err(
                "rate_per_second",
                format!(
                    "must be at most {MAX_RATE_MICROSECOND_ENGINES:e} with store `{}` (engine {engine} counts whole microseconds), got {:.0}; use the memory or nats engine for faster rates",
                    spec.store,
                    1e9 / g.emission_ns() as f64
                ),
            ))
        }
        (EngineKind::Nats, Some(RateSpec::SlidingWindow(w))) if w.limit() > MAX_NATS_WINDOW_LIMIT => {
            return Err(err(
                "limit",
                format!(
                    "must be at most {MAX_NATS_WINDOW_LIMIT} with store `{}` (engine nats keeps a window's grants in one value under the 1 MiB payload limit), got {}; use a token bucket or another engine",
                    spec.store,
                    w.limit()
                ),
            ))
        }
        _ => {}
    }
    if let (EngineKind::Nats, Some(c)) = (store.engine, spec.concurrency) {
        if c.max > MAX_NATS_CONCURRENT {
            return Err(err(
                "max_concurrent",
                format!(
                    "must be at most {MAX_NATS_CONCURRENT} with store `{}` (engine nats keeps a key's holders in one value under the 1 MiB payload limit), got {}",
                    spec.store, c.max
                ),
            ));
        }
    }
    Ok(())
}

/// A network store's lease must outlast one renewal (see [`LEASE_PER_RESPONSE_TIMEOUT`]).
fn check_lease(
    source: &str,
    name: &str,
    spec: &LimiterSpec,
    store: &StoreConfig,
) -> Result<(), ConfigError> {
    let Some(c) = spec.concurrency else {
        return Ok(());
    };
    if store.engine == EngineKind::Memory {
        return Ok(());
    }
    let needed = store.response_timeout().mul_f64(LEASE_PER_RESPONSE_TIMEOUT);
    if c.lease < needed {
        return Err(ConfigError::new(
            source,
            format!("limiters.{name}.lease_seconds"),
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

fn v_table(value: toml::Value) -> Result<toml::Table, toml::Value> {
    match value {
        toml::Value::Table(t) => Ok(t),
        other => Err(other),
    }
}

fn sub_tables(
    source: &str,
    path: &str,
    value: Result<toml::Table, toml::Value>,
) -> Result<Vec<(String, toml::Value)>, ConfigError> {
    let table = value.map_err(|v| {
        ConfigError::new(
            source,
            path,
            format!("must be a table, got {}", v.type_str()),
        )
    })?;
    table
        .into_iter()
        .map(|(name, v)| {
            if name.is_empty() {
                return Err(ConfigError::new(source, path, "names must not be empty"));
            }
            if !v.is_table() {
                return Err(ConfigError::new(
                    source,
                    format!("{path}.{name}"),
                    format!("must be a table like [{path}.{name}], got {}", v.type_str()),
                ));
            }
            Ok((name, v))
        })
        .collect()
}

fn deserialize<T: serde::de::DeserializeOwned>(
    source: &str,
    path: &str,
    value: toml::Value,
) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let inner = e.path().to_string();
        let full = if inner == "." || inner.is_empty() {
            path.to_string()
        } else {
            format!("{path}.{inner}")
        };
        ConfigError::new(source, full, e.into_inner().to_string())
    })
}

fn validate_store(source: &str, path: &str, store: &StoreConfig) -> Result<(), ConfigError> {
    let err = |key: &str, msg: String| ConfigError::new(source, format!("{path}.{key}"), msg);
    if let Some(p) = &store.key_prefix {
        // Kept to characters that are literal in Redis patterns and NATS subjects.
        if p.is_empty()
            || !p
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:/".contains(&b))
        {
            return Err(err(
                "key_prefix",
                format!("may contain only letters, digits and - _ . : /, got {p:?}"),
            ));
        }
    }
    // A request needs a millisecond on the fastest loopback; a sweep less
    // often than every 10 ms is all a sweep needs; a bucket forgets keys no
    // sooner than a second.
    for (key, value, range) in [
        (
            "response_timeout",
            store.response_timeout,
            Range::at_least(0.001),
        ),
        (
            "connect_timeout",
            store.connect_timeout,
            Range::at_least(0.001),
        ),
        ("sweep_seconds", store.sweep_seconds, Range::at_least(0.01)),
        (
            "max_age_seconds",
            store.max_age_seconds,
            Range::at_least(1.0),
        ),
    ] {
        if let Some(t) = value {
            seconds(t, range).map_err(|m| err(key, m))?;
        }
    }
    use EngineKind::{Nats, Postgres, Redis};
    let engine_specific: [(&str, bool, &[EngineKind]); 8] = [
        ("pool_size", store.pool_size.is_some(), &[Postgres]),
        ("schema", store.schema.is_some(), &[Postgres]),
        ("sweep_seconds", store.sweep_seconds.is_some(), &[Postgres]),
        (
            "tls_ca_file",
            store.tls_ca_file.is_some(),
            &[Postgres, Nats, Redis],
        ),
        ("bucket", store.bucket.is_some(), &[Nats]),
        ("max_cas_retries", store.max_cas_retries.is_some(), &[Nats]),
        (
            "credentials_file",
            store.credentials_file.is_some(),
            &[Nats],
        ),
        ("max_age_seconds", store.max_age_seconds.is_some(), &[Nats]),
    ];
    for (key, set, engines) in engine_specific {
        if set && !engines.contains(&store.engine) {
            let names: Vec<&str> = engines.iter().map(|e| e.as_str()).collect();
            return Err(err(
                key,
                format!(
                    "applies only to engine `{}`, this store's engine is `{}`; remove it",
                    names.join("` or `"),
                    store.engine.as_str()
                ),
            ));
        }
    }
    if let Some(b) = &store.bucket {
        if b.is_empty()
            || !b
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
        {
            return Err(err(
                "bucket",
                format!("may contain only letters, digits, _ and -, got {b:?}"),
            ));
        }
    }
    if store.max_cas_retries == Some(0) {
        return Err(err("max_cas_retries", "must be >= 1, got 0".into()));
    }
    if store.engine == Nats {
        if let Some(p) = &store.key_prefix {
            if p.contains(':') || p.starts_with('.') || p.ends_with('.') || p.contains("..") {
                return Err(err(
                    "key_prefix",
                    format!("NATS keys cannot contain `:` or empty `.` tokens; use letters, digits and - _ . /, got {p:?}"),
                ));
            }
        }
    }
    if let Some(n) = store.pool_size {
        if n == 0 {
            return Err(err("pool_size", "must be >= 1, got 0".into()));
        }
    }
    if let Some(schema) = &store.schema {
        let mut chars = schema.chars();
        let valid = chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
            && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            && schema.len() <= 50;
        if !valid {
            return Err(err(
                "schema",
                format!("must be a lower-case SQL name ([a-z_][a-z0-9_]*, at most 50 characters), got {schema:?}"),
            ));
        }
    }
    match store.engine {
        EngineKind::Memory => {
            if store.url.is_some() {
                return Err(err(
                    "url",
                    "the memory engine keeps state in this process and takes no url; remove it or choose another engine".into(),
                ));
            }
            Ok(())
        }
        EngineKind::Redis if cfg!(feature = "redis") => match store.url.as_ref().map(|u| u.expose()) {
            None => Err(err(
                "url",
                "is required for engine `redis`, e.g. url = \"redis://127.0.0.1:6379/0\"".into(),
            )),
            Some(u)
                if !["redis://", "rediss://", "redis+unix://", "unix://"]
                    .iter()
                    .any(|s| u.starts_with(s)) =>
            {
                Err(err(
                    "url",
                    format!(
                        "must start with redis://, rediss:// (TLS) or unix://, got {:?}",
                        crate::engine::redact_url(u)
                    ),
                ))
            }
            Some(u) if store.tls_ca_file.is_some() && !u.starts_with("rediss://") => Err(err(
                "tls_ca_file",
                format!(
                    "is for TLS connections, and this url is not one: use rediss://, got {:?}",
                    crate::engine::redact_url(u)
                ),
            )),
            Some(_) => Ok(()),
        },
        EngineKind::Nats if cfg!(feature = "nats") => match store.url.as_ref().map(|u| u.expose()) {
            None => Err(err(
                "url",
                "is required for engine `nats`, e.g. url = \"nats://127.0.0.1:4222\"".into(),
            )),
            Some(u)
                if !["nats://", "tls://"]
                    .iter()
                    .any(|s| u.starts_with(s)) =>
            {
                Err(err(
                    "url",
                    format!(
                        "must start with nats:// or tls:// (TLS), got {:?}",
                        crate::engine::redact_url(u)
                    ),
                ))
            }
            Some(_) => Ok(()),
        },
        EngineKind::Postgres if cfg!(feature = "postgres") => match store.url.as_ref().map(|u| u.expose()) {
            None => Err(err(
                "url",
                "is required for engine `postgres`, e.g. url = \"postgres://user@127.0.0.1:5432/app\" (or dsn = \"host=... dbname=...\")".into(),
            )),
            Some(u) => check_postgres_url(u).map_err(|m| err("url", m)),
        },
        other => Err(err(
            "engine",
            format!(
                "engine `{}` is not available in this build of ratesync {}; available: {}",
                other.as_str(),
                env!("CARGO_PKG_VERSION"),
                available_engines().join(", ")
            ),
        )),
    }
}

#[cfg(feature = "postgres")]
fn check_postgres_url(url: &str) -> Result<(), String> {
    url.parse::<tokio_postgres::Config>()
        .map(|_| ())
        .map_err(|e| {
            format!(
                "is not a valid PostgreSQL URL or key=value DSN ({e}): {:?}",
                crate::engine::redact_url(url)
            )
        })
}

#[cfg(not(feature = "postgres"))]
fn check_postgres_url(_: &str) -> Result<(), String> {
    Ok(())
}

/// The engines compiled into this build.
pub fn available_engines() -> Vec<&'static str> {
    let mut v = vec!["memory"];
    if cfg!(feature = "redis") {
        v.push("redis");
    }
    if cfg!(feature = "postgres") {
        v.push("postgres");
    }
    if cfg!(feature = "nats") {
        v.push("nats");
    }
    v
}

fn validate_limiter(
    source: &str,
    name: &str,
    lim: &LimiterConfig,
    store_exists: impl Fn(&str) -> bool,
    known_stores: &[String],
) -> Result<LimiterSpec, ConfigError> {
    let at = |key: &str| format!("limiters.{name}.{key}");
    let err = |key: &str, msg: String| ConfigError::new(source, at(key), msg);
    let algorithm = lim.algorithm.unwrap_or_default();

    let store = lim
        .store
        .clone()
        .unwrap_or_else(|| DEFAULT_STORE.to_string());
    if !store_exists(&store) {
        let mut known: Vec<&str> = known_stores.iter().map(String::as_str).collect();
        if !known.contains(&DEFAULT_STORE) {
            known.insert(0, DEFAULT_STORE);
        }
        return Err(err(
            "store",
            format!(
                "no store named `{store}`; define [stores.{store}] or use one of: {}",
                known.join(", ")
            ),
        ));
    }

    let rate = match algorithm {
        Algorithm::TokenBucket => {
            for (key, set) in [
                ("limit", lim.limit.is_some()),
                ("window_seconds", lim.window_seconds.is_some()),
            ] {
                if set {
                    return Err(err(key, "belongs to a sliding window; add algorithm = \"sliding_window\" or use rate_per_second".into()));
                }
            }
            match lim.rate_per_second {
                None => {
                    if lim.burst.is_some() {
                        return Err(err("burst", "needs rate_per_second".into()));
                    }
                    None
                }
                Some(rate) => {
                    if !(rate.is_finite() && rate > 0.0) {
                        return Err(err(
                            "rate_per_second",
                            format!("must be a positive number, got {rate}"),
                        ));
                    }
                    let burst = lim.burst.unwrap_or(1);
                    if burst < 1 {
                        return Err(err("burst", format!("must be >= 1, got {burst}")));
                    }
                    let burst = u32::try_from(burst).map_err(|_| {
                        err("burst", format!("must be <= {}, got {burst}", u32::MAX))
                    })?;
                    if rate > MAX_RATE {
                        return Err(err(
                            "rate_per_second",
                            format!("must be at most {MAX_RATE:e} (one grant per nanosecond), got {rate}"),
                        ));
                    }
                    let refill = f64::from(burst) / rate;
                    if refill > crate::duration::MAX_SECONDS {
                        return Err(err(
                            "burst",
                            format!(
                                "with rate_per_second = {rate}, the bucket takes {refill:.3e} s to refill; burst / rate_per_second must be at most {} s (10 years): lower burst or raise the rate",
                                crate::duration::MAX_SECONDS
                            ),
                        ));
                    }
                    let gcra = Gcra::new(rate, burst)
                        .ok_or_else(|| err("rate_per_second", format!("cannot be used: {rate}")))?;
                    Some(RateSpec::TokenBucket(gcra))
                }
            }
        }
        Algorithm::SlidingWindow => {
            for (key, set) in [
                ("rate_per_second", lim.rate_per_second.is_some()),
                ("burst", lim.burst.is_some()),
            ] {
                if set {
                    return Err(err(key, "belongs to a token bucket; remove it or drop algorithm = \"sliding_window\"".into()));
                }
            }
            let limit = lim
                .limit
                .ok_or_else(|| err("limit", "is required for a sliding window".into()))?;
            if limit < 1 {
                return Err(err("limit", format!("must be >= 1, got {limit}")));
            }
            let limit = u32::try_from(limit)
                .map_err(|_| err("limit", format!("must be <= {}, got {limit}", u32::MAX)))?;
            let window = lim
                .window_seconds
                .ok_or_else(|| err("window_seconds", "is required for a sliding window".into()))?;
            let window = seconds(window, Range::POSITIVE).map_err(|m| err("window_seconds", m))?;
            let ns = u64::try_from(window.as_nanos()).unwrap_or(u64::MAX);
            let w = SlidingWindow::new(limit, ns).ok_or_else(|| {
                err(
                    "window_seconds",
                    format!("must be at least 1 ns, got {window:?}"),
                )
            })?;
            Some(RateSpec::SlidingWindow(w))
        }
    };

    let concurrency = match lim.max_concurrent {
        None => {
            if lim.lease_seconds.is_some() {
                return Err(err("lease_seconds", "needs max_concurrent".into()));
            }
            None
        }
        Some(max) => {
            if max < 1 {
                return Err(err("max_concurrent", format!("must be >= 1, got {max}")));
            }
            let max = u32::try_from(max).map_err(|_| {
                err(
                    "max_concurrent",
                    format!("must be <= {}, got {max}", u32::MAX),
                )
            })?;
            let lease = match lim.lease_seconds {
                None => DEFAULT_LEASE,
                // Any positive value here; the minimum below explains itself.
                Some(s) => seconds(s, Range::at_least(f64::MIN_POSITIVE))
                    .map_err(|m| err("lease_seconds", m))?,
            };
            if lease < MIN_LEASE {
                return Err(err(
                    "lease_seconds",
                    format!(
                        "must be at least {} s, got {}: a shorter lease runs out under a holder that is merely slow, and a second holder gets its slot",
                        MIN_LEASE.as_secs_f64(),
                        lim.lease_seconds.unwrap_or_default()
                    ),
                ));
            }
            Some(ConcurrencySpec { max, lease })
        }
    };

    if rate.is_none() && concurrency.is_none() {
        return Err(ConfigError::new(
            source,
            format!("limiters.{name}"),
            "limits nothing: set rate_per_second, a sliding window (algorithm = \"sliding_window\", limit, window_seconds), or max_concurrent",
        ));
    }

    let timeout = match lim.timeout {
        None => None,
        Some(t) => Some(seconds(t, Range::ZERO_OR_MORE).map_err(|m| err("timeout", m))?),
    };

    Ok(LimiterSpec {
        store,
        rate,
        concurrency,
        timeout,
        on_backend_error: lim.on_backend_error.unwrap_or_default(),
    })
}

/// Validates a limiter for programmatic registration (see [`Registry::register`](crate::Registry::register)).
pub(crate) fn validate_registered(
    name: &str,
    lim: &LimiterConfig,
    store_exists: impl Fn(&str) -> bool,
    known_stores: &[String],
) -> Result<LimiterSpec, ConfigError> {
    validate_limiter("<registered>", name, lim, store_exists, known_stores)
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// Expands `${VAR}` and `${VAR:-default}` in `text`; `$${` stands for a literal `${`.
///
/// Expanded values are data, never syntax: inside a `"..."` string a value is
/// escaped (quotes, backslashes, line breaks and control characters all
/// arrive as written); inside a `'...'` string a value that such a string
/// cannot hold (a `'`, a line break) is an error; outside quotes a value must
/// be a number or `true`/`false`. So no variable can add a key or a table.
/// Comments (from a `#` outside a string to the end of the line) are left
/// alone, so a commented-out example does not demand its variables. An unset
/// variable without a default is an error naming it and its line.
pub fn expand_env(text: &str, env: EnvLookup<'_>) -> Result<String, (usize, String)> {
    #[derive(Clone, Copy, PartialEq)]
    enum At {
        Bare,
        Basic { multi: bool },
        Literal { multi: bool },
        Comment,
    }
    let mut out = String::with_capacity(text.len());
    let mut at = At::Bare;
    let mut line = 1;
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        let here = rest;
        let mut step = c.len_utf8();
        match (at, c) {
            (_, '\n') => {
                line += 1;
                if at == At::Comment {
                    at = At::Bare;
                }
                out.push(c);
            }
            (At::Comment, _) => out.push(c),
            (_, '$') if here.starts_with("$${") && at != At::Comment => {
                out.push_str("${");
                step = 3;
            }
            (_, '$') if here.starts_with("${") => {
                let body = &here[2..];
                let end = body
                    .find(['}', '\n'])
                    .filter(|&e| body[e..].starts_with('}'));
                let Some(end) = end else {
                    let this_line = here.lines().next().unwrap_or("");
                    return Err((
                        line,
                        format!("unterminated `${{` in `{}`", this_line.trim_end()),
                    ));
                };
                let expr = &body[..end];
                let value = lookup(expr, env).map_err(|m| (line, m))?;
                let name = expr.split_once(":-").map_or(expr, |(n, _)| n);
                match at {
                    At::Basic { .. } => push_basic_escaped(&mut out, &value),
                    At::Literal { multi } => {
                        if value.contains('\'')
                            || (!multi && value.contains(['\n', '\r']))
                            || value
                                .chars()
                                .any(|c| c.is_control() && c != '\t' && c != '\n')
                        {
                            return Err((line, format!(
                                "the value of {name} cannot stand in a '...' string (it holds a ', a line break or a control character); write \"${{{name}}}\" instead"
                            )));
                        }
                        out.push_str(&value);
                    }
                    _ => {
                        if !is_bare_scalar(&value) {
                            let key = text_line(text, line)
                                .split('=')
                                .next()
                                .unwrap_or("")
                                .trim()
                                .to_string();
                            return Err((line, format!(
                                "`${{{expr}}}` stands outside quotes, so its value must be a number or true/false, and {name} is {value:?}{}; put it in quotes (\"${{{name}}}\") for text",
                                if key.is_empty() { String::new() } else { format!(" (for `{key}`)") }
                            )));
                        }
                        out.push_str(value.trim());
                    }
                }
                step = 2 + end + 1;
            }
            (At::Bare, '#') => {
                at = At::Comment;
                out.push(c);
            }
            (At::Bare, '"') => {
                let multi = here.starts_with("\"\"\"");
                at = At::Basic { multi };
                step = if multi { 3 } else { 1 };
                out.push_str(&here[..step]);
            }
            (At::Bare, '\'') => {
                let multi = here.starts_with("\'\'\'");
                at = At::Literal { multi };
                step = if multi { 3 } else { 1 };
                out.push_str(&here[..step]);
            }
            (At::Basic { .. }, '\\') => {
                // An escape: the next character is never a closing quote.
                let next = here[1..].chars().next().map_or(0, char::len_utf8);
                step = 1 + next;
                if here[1..].starts_with('\n') {
                    line += 1;
                }
                out.push_str(&here[..step]);
            }
            (At::Basic { multi }, '"') | (At::Literal { multi }, '\'') => {
                let close = if multi { 3 } else { 1 };
                let quote = if c == '"' { "\"\"\"" } else { "\'\'\'" };
                if !multi || here.starts_with(quote) {
                    at = At::Bare;
                    step = close;
                }
                out.push_str(&here[..step]);
            }
            _ => out.push(c),
        }
        rest = &here[step..];
    }
    Ok(out)
}

/// The value of `${expr}`: `NAME` or `NAME:-default`.
fn lookup(expr: &str, env: EnvLookup<'_>) -> Result<String, String> {
    let (name, default) = match expr.split_once(":-") {
        Some((n, d)) => (n, Some(d)),
        None => (expr, None),
    };
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(format!(
            "`${{{expr}}}`: `{name}` is not a valid variable name"
        ));
    }
    match (
        env(name).filter(|v| !v.is_empty() || default.is_none()),
        default,
    ) {
        (Some(v), _) => Ok(v),
        (None, Some(d)) => Ok(d.to_string()),
        (None, None) => Err(format!(
            "environment variable {name} is not set; set it or write ${{{name}:-default}}"
        )),
    }
}

/// Appends `value` as the inside of a TOML `"..."` string.
fn push_basic_escaped(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = std::fmt::Write::write_fmt(out, format_args!("\\u{:04X}", c as u32));
            }
            c => out.push(c),
        }
    }
}

/// A value that may stand outside quotes: a TOML integer, float or boolean.
fn is_bare_scalar(value: &str) -> bool {
    let v = value.trim();
    !v.is_empty()
        && !v.contains(['\n', '\r', '#', '=', '[', ']', '{', '}', ',', '"', '\''])
        && toml::from_str::<toml::Table>(&format!("v = {v}"))
            .ok()
            .and_then(|t| t.get("v").cloned())
            .is_some_and(|x| x.is_integer() || x.is_float() || x.is_bool())
}

fn text_line(text: &str, line: usize) -> &str {
    text.lines().nth(line - 1).unwrap_or("")
}
