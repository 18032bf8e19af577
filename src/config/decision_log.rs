//! The `[decision_log]` table: where decisions are logged, how the writer
//! batches them, and how long they are kept. Which decisions a policy logs
//! is the policy's own (`log_decisions`, `log_keys`, `log_ips`).
//!
//! ```toml
//! [decision_log]
//! store = "pg"                 # a [stores.NAME] of engine "postgres", shared by hosts;
//!                              # without it, the SQLite file at `path`
//! path = "ratesync-decisions.sqlite3"
//! queue = 65536                # decisions held for the writer; more are dropped, counted
//! batch = 1000                 # decisions per write
//! flush_interval = "1s"        # the longest a decision waits in the queue
//! retention = "30d"            # raw events kept this long
//! rollup_retention = "400d"    # per-minute rollups kept this long
//! cleanup_interval = "1h"      # how often the writer deletes what is older
//! cleanup_batch = 10000        # rows per delete statement
//! key_secret = "${RATESYNC_LOG_KEY_SECRET}"   # for log_keys = "hashed"
//! host = "api-1"               # default: the machine's host name
//! ```

use crate::duration::{parse_seconds, Range};
use crate::error::ConfigError;
use crate::secret::Secret;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// The SQLite file used when `[decision_log]` names no store.
pub const DEFAULT_LOG_PATH: &str = "ratesync-decisions.sqlite3";

/// The shortest `key_secret`.
pub const MIN_KEY_SECRET: usize = 16;

/// The `[decision_log]` table as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionLogConfig {
    /// A PostgreSQL store to log into.
    pub store: Option<String>,
    /// The SQLite file, when no store is named.
    pub path: Option<PathBuf>,
    /// Decisions waiting for the writer, at most.
    pub queue: Option<i64>,
    /// Decisions per write.
    pub batch: Option<i64>,
    /// The longest a decision waits before it is written.
    pub flush_interval: Option<String>,
    /// How long raw events are kept.
    pub retention: Option<String>,
    /// How long per-minute rollups are kept.
    pub rollup_retention: Option<String>,
    /// How often the writer cleans up.
    pub cleanup_interval: Option<String>,
    /// Rows per delete statement.
    pub cleanup_batch: Option<i64>,
    /// The secret keys are digested under (`log_keys = "hashed"`).
    pub key_secret: Option<Secret>,
    /// The host name logged with each decision.
    pub host: Option<String>,
}

/// `[decision_log]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    /// Where: a PostgreSQL store, or a SQLite file.
    pub sink: SinkChoice,
    /// Queue capacity.
    pub queue: usize,
    /// Decisions per write.
    pub batch: usize,
    /// The longest wait before a write.
    pub flush_interval: Duration,
    /// Raw events are kept this long.
    pub retention: Duration,
    /// Rollups are kept this long.
    pub rollup_retention: Duration,
    /// Cleanup period.
    pub cleanup_interval: Duration,
    /// Rows per delete statement.
    pub cleanup_batch: u32,
    /// The digest secret, if set.
    pub key_secret: Option<Secret>,
    /// The host name logged.
    pub host: String,
}

/// Where the log goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkChoice {
    /// The `[stores.NAME]` (engine `postgres`) of this name.
    Postgres(String),
    /// A SQLite file.
    Sqlite(PathBuf),
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            sink: SinkChoice::Sqlite(PathBuf::from(DEFAULT_LOG_PATH)),
            queue: 65_536,
            batch: 1000,
            flush_interval: Duration::from_secs(1),
            retention: Duration::from_secs(30 * 86_400),
            rollup_retention: Duration::from_secs(400 * 86_400),
            cleanup_interval: Duration::from_secs(3600),
            cleanup_batch: 10_000,
            key_secret: None,
            host: host_name(),
        }
    }
}

/// This machine's host name (`$HOSTNAME`, else the kernel's, else
/// `localhost`): what the log records as `host` unless `host` is set.
pub fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

impl DecisionLogConfig {
    /// Validates the table; `postgres_store` says whether a store of that
    /// name exists and is of engine `postgres` (`Err` with what it is).
    pub fn validate(
        &self,
        source: &str,
        postgres_store: impl Fn(&str) -> Result<(), String>,
    ) -> Result<LogSettings, ConfigError> {
        let err =
            |key: &str, msg: String| ConfigError::new(source, format!("decision_log.{key}"), msg);
        let mut s = LogSettings::default();
        match (&self.store, &self.path) {
            (Some(_), Some(_)) => {
                return Err(err(
                    "path",
                    "a log goes to one sink: remove `path` (SQLite) or `store` (PostgreSQL)".into(),
                ))
            }
            (Some(store), None) => {
                postgres_store(store).map_err(|m| err("store", m))?;
                s.sink = SinkChoice::Postgres(store.clone());
            }
            (None, Some(p)) => s.sink = SinkChoice::Sqlite(p.clone()),
            (None, None) => {}
        }
        let count = |key: &str, v: Option<i64>, min: i64, max: i64, default: usize| {
            v.map_or(Ok(default), |n| {
                if (min..=max).contains(&n) {
                    Ok(n as usize)
                } else {
                    Err(err(
                        key,
                        format!("must be a whole number from {min} to {max}, got {n}"),
                    ))
                }
            })
        };
        s.queue = count("queue", self.queue, 1, 10_000_000, s.queue)?;
        s.batch = count("batch", self.batch, 1, 100_000, s.batch)?;
        s.cleanup_batch = count(
            "cleanup_batch",
            self.cleanup_batch,
            1,
            1_000_000,
            s.cleanup_batch as usize,
        )? as u32;
        let span = |key: &str, v: &Option<String>, min: f64, default: Duration| {
            v.as_deref().map_or(Ok(default), |t| {
                parse_seconds(
                    t,
                    Range {
                        min,
                        max: crate::duration::MAX_SECONDS,
                    },
                )
                .map_err(|e| err(key, e))
            })
        };
        s.flush_interval = span(
            "flush_interval",
            &self.flush_interval,
            0.001,
            s.flush_interval,
        )?;
        s.retention = span("retention", &self.retention, 60.0, s.retention)?;
        s.rollup_retention = span(
            "rollup_retention",
            &self.rollup_retention,
            60.0,
            s.rollup_retention,
        )?;
        s.cleanup_interval = span(
            "cleanup_interval",
            &self.cleanup_interval,
            1.0,
            s.cleanup_interval,
        )?;
        if let Some(k) = &self.key_secret {
            if k.expose().chars().count() < MIN_KEY_SECRET {
                return Err(err("key_secret", format!("is shorter than {MIN_KEY_SECRET} characters, so digests of guessable keys could be reversed: use a long random one (openssl rand -hex 32)")));
            }
            s.key_secret = Some(k.clone());
        }
        if let Some(h) = &self.host {
            if h.is_empty() || h.len() > 255 || h.chars().any(char::is_control) {
                return Err(err(
                    "host",
                    format!("{h:?}: write 1 to 255 printable characters"),
                ));
            }
            s.host = h.clone();
        }
        Ok(s)
    }
}
