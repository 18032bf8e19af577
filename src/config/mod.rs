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

pub mod decision_log;
pub mod env;
pub mod envoy;
pub mod http;
pub mod limiter;
pub mod policy;
pub mod store;

pub use crate::quota::{ConcurrencySpec, FailureMode, LimiterSpec, RateSpec};
pub use env::{expand_env, EnvLookup};
pub(crate) use limiter::validate_registered;
pub use limiter::{Algorithm, LimiterConfig, DEFAULT_LEASE, DEFAULT_STORE, MAX_RATE, MIN_LEASE};
pub use store::{EngineKind, StoreConfig, LEASE_PER_RESPONSE_TIMEOUT};

use crate::error::ConfigError;
use env::process_env;
use limiter::validate_limiter;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
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
    pub alerts: Option<crate::alert::config::AlertConfig>,
    /// Policies by name, already validated (see [`crate::policy`]).
    pub policies: BTreeMap<String, crate::policy::PolicySpec>,
    /// The `[http]` table, if any (see [`http`]).
    pub http: Option<http::HttpConfig>,
    /// The `[envoy]` table, if any (see [`envoy`]).
    pub envoy: Option<envoy::EnvoyConfig>,
    /// The `[decision_log]` table, validated, if any (without it, a policy
    /// that logs gets the defaults; see [`decision_log`]).
    pub decision_log: Option<decision_log::LogSettings>,
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
        let mut raw_policies = BTreeMap::new();
        let mut raw_log = None;
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
                "policies" => {
                    for (name, v) in sub_tables(source_name, "policies", v_table(value))? {
                        let path = format!("policies.{name}");
                        let p: policy::PolicyConfig = deserialize(source_name, &path, v)?;
                        raw_policies.insert(name, p);
                    }
                }
                "decision_log" => {
                    raw_log = Some(deserialize::<decision_log::DecisionLogConfig>(
                        source_name,
                        "decision_log",
                        value,
                    )?);
                }
                "envoy" => {
                    config.envoy = Some(deserialize(source_name, "envoy", value)?);
                }
                "http" => {
                    let h: http::HttpConfig = deserialize(source_name, "http", value)?;
                    h.validate(source_name)?;
                    config.http = Some(h);
                }
                "alerts" => {
                    let alerts: crate::alert::config::AlertConfig =
                        deserialize(source_name, "alerts", value)?;
                    alerts.validate(source_name)?;
                    config.alerts = Some(alerts);
                }
                other => return Err(ConfigError::new(
                    source_name,
                    other,
                    "unknown key; expected `stores`, `limiters`, `policies`, `http`, `envoy`, `decision_log` or `alerts`",
                )),
            }
        }
        if let Some(store) = config
            .alerts
            .as_ref()
            .and_then(|a| a.shared_cooldown_store.as_deref())
        {
            if store != DEFAULT_STORE && !config.stores.contains_key(store) {
                return Err(ConfigError::new(
                    source_name,
                    "alerts.shared_cooldown_store",
                    format!(
                        "no store named `{store}`; define [stores.{store}] or remove the setting"
                    ),
                ));
            }
        }
        for (name, lim) in raw_limiters {
            let spec = config.validate_limiter(&name, &lim)?;
            config.limiters.insert(name, spec);
        }
        for (name, p) in raw_policies {
            let spec = policy::validate_policy(source_name, &name, &p, |s| {
                s == DEFAULT_STORE || config.stores.contains_key(s)
            })?;
            config.policies.insert(name, spec);
        }
        if let Some(raw) = raw_log {
            let settings = raw.validate(source_name, |store| match config.stores.get(store) {
                None => Err(format!("no store named `{store}`; define [stores.{store}] with engine = \"postgres\", or remove `store` to log into a SQLite file")),
                Some(s) if s.engine != EngineKind::Postgres => Err(format!("store `{store}` is of engine `{}`; the decision log is kept in PostgreSQL or SQLite: name a postgres store, or remove `store` for SQLite", s.engine.as_str())),
                Some(_) => Ok(()),
            })?;
            config.decision_log = Some(settings);
        }
        if let Some((name, _)) = config.policies.iter().find(|(_, p)| {
            p.log.keys == crate::decision_log::KeyPrivacy::Hashed
                && config
                    .decision_log
                    .as_ref()
                    .is_none_or(|l| l.key_secret.is_none())
        }) {
            return Err(ConfigError::new(
                source_name,
                format!("policies.{name}.log_keys"),
                "\"hashed\" digests keys under decision_log.key_secret, which is not set: add key_secret = \"${RATESYNC_LOG_KEY_SECRET}\" to [decision_log]",
            ));
        }
        if let Some(envoy) = &config.envoy {
            envoy.validate(source_name, |p| config.policies.contains_key(p))?;
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

/// The checks of a limiter that depend on its store's settings, for files
/// and for limiters registered from code alike: the lease against the
/// store's response time, then the engine's own ranges.
pub(crate) fn check_against_store(
    source: &str,
    name: &str,
    spec: &LimiterSpec,
    store: &StoreConfig,
) -> Result<(), ConfigError> {
    let engine_check = match store.engine {
        EngineKind::Memory => Ok(()),
        #[cfg(feature = "redis")]
        EngineKind::Redis => crate::engine::redis::check_limiter(spec, store),
        #[cfg(feature = "postgres")]
        EngineKind::Postgres => crate::engine::postgres::check_limiter(spec, store),
        #[cfg(feature = "nats")]
        EngineKind::Nats => crate::engine::nats::check_limiter(spec, store),
        #[allow(unreachable_patterns)]
        _ => Ok(()),
    };
    store::check_lease(spec, store)
        .and(engine_check)
        .map_err(|(key, msg)| {
            let at = if key.is_empty() {
                format!("limiters.{name}")
            } else {
                format!("limiters.{name}.{key}")
            };
            ConfigError::new(source, at, msg)
        })
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

/// A store's shared settings, then its engine's own (each engine checks
/// its settings beside its code), or the engine's absence from this build.
fn validate_store(source: &str, path: &str, store: &StoreConfig) -> Result<(), ConfigError> {
    let engine_check = || match store.engine {
        EngineKind::Memory => crate::engine::memory::check_settings(store),
        #[cfg(feature = "redis")]
        EngineKind::Redis => crate::engine::redis::check_settings(store),
        #[cfg(feature = "postgres")]
        EngineKind::Postgres => crate::engine::postgres::check_settings(store),
        #[cfg(feature = "nats")]
        EngineKind::Nats => crate::engine::nats::check_settings(store),
        #[allow(unreachable_patterns)]
        other => Err((
            "engine",
            format!(
                "engine `{}` is not available in this build of ratesync {}; available: {}",
                other.as_str(),
                env!("CARGO_PKG_VERSION"),
                available_engines().join(", ")
            ),
        )),
    };
    store
        .check_shared()
        .and_then(|()| engine_check())
        .map_err(|(key, msg)| ConfigError::new(source, format!("{path}.{key}"), msg))
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

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}
