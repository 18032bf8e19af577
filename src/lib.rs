//! # ratesync
//!
//! Distributed, coordinated rate limiting with async acquire semantics. Many
//! tasks, processes and hosts share one limit; each awaits a permit the way it
//! awaits I/O.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> ratesync::Result<()> {
//! use std::time::Duration;
//! let registry = ratesync::Registry::from_toml_str(r#"
//!     [limiters.api]
//!     rate_per_second = 100.0   # token bucket (GCRA) ...
//!     burst = 20                # ... with bursts up to 20
//!     max_concurrent = 8        # and at most 8 in flight
//!     timeout = 5.0             # default bound for acquire()
//! "#).await?;
//! let api = registry.limiter("api")?;
//! let permit = api.acquire().await?;                       // waits, bounded by 5 s
//! let other = api.acquire_timeout(Duration::from_millis(200)).await?;
//! if let Some(p) = api.try_acquire().await? { drop(p) }    // never waits
//! let per_user = api.key("user:42");                       // same policy, own counters
//! drop((permit, other));                                   // frees the concurrency slots
//! println!("{:?}", api.metrics());
//! registry.close().await;           // before exiting: the dropped slots are given back
//! # let _ = per_user; Ok(()) }
//! ```
//!
//! ## What is promised
//! Across any number of processes sharing a store, grants in any interval of
//! length `t` never exceed `burst + rate * t` (token bucket), or `limit` in
//! any window (sliding window); holders of a concurrency limiter never exceed
//! `max_concurrent`. Waiting is computed, not polled: `acquire` reserves the
//! earliest slot within its timeout and sleeps until it, or fails at once.
//! See the README for the whole contract and the configuration reference.
//!
//! A permit dropped rather than released gives its slot back on a background
//! task. A runtime that shuts down first would cancel that task and leave the
//! slot held until its lease ran out, so the last handle of a [`Registry`]
//! to go away waits for such releases (at most 5 s) on a multi-threaded
//! runtime. A current-thread runtime cannot wait inside a drop: there it
//! warns through `tracing`, and [`Registry::close`]`.await` before the
//! program exits is the way (it is right on every runtime, and the examples
//! use it).
//!
//! ## Modules
//! - [`Registry`], [`Limiter`], [`Permit`], [`check_all`]: the API.
//! - [`config`]: the TOML schema (`store`, `limiter`), `${VAR}` expansion
//!   (`env`) and validation; [`quota`]: the validated limits the engines
//!   receive, and the one rate decision over a state cell.
//! - [`engine`]: the trait every backend implements, and the engines: `memory`
//!   (in-process, always), `redis` (feature `redis`: one Lua script call per
//!   decision), `postgres` (feature `postgres`: one PL/pgSQL function call per
//!   decision) and `nats` (feature `nats`: JetStream KV, compare-and-set on
//!   revisions). A store picks one in the configuration:
//!   `[stores.shared] engine = "redis", url = "redis://127.0.0.1:6379"`.
//! - [`gcra`], [`window`], [`lease`]: the pure limiting math, shared by engines.
//! - [`metrics`]: per-limiter counters and snapshots; `telemetry` (feature
//!   `prometheus`): OpenTelemetry instruments and `/metrics`.
//! - [`alert`]: the `[alerts]` table, the alert loop and its channels.
//! - [`secret`], [`duration`]: secrets that never print, durations in range.
//! - [`audit`]: checks recorded grants against a limit.
//! - [`testing`]: helpers for your own tests.

#![warn(missing_docs)]

pub mod alert;
pub mod analytics;
pub mod audit;
mod compose;
pub mod config;
pub mod counter;
pub mod decision_log;
pub mod duration;
pub mod engine;
mod error;
pub mod gcra;
pub mod http;
mod interned;
mod key;
pub mod lease;
mod limiter;
pub mod metrics;
pub mod policy;
mod queue;
pub mod quota;
mod registry;
pub mod secret;
#[cfg(feature = "prometheus")]
pub mod telemetry;
pub mod testing;
#[cfg(any(feature = "redis", feature = "postgres", feature = "alerts"))]
mod tls;
mod units;
pub mod window;

// Every Rust snippet of the README compiles (and runs, unless marked
// `no_run`) with `cargo test --all-features --doc`.
#[cfg(all(
    doctest,
    feature = "prometheus",
    feature = "alerts",
    feature = "axum",
    feature = "test-util"
))]
#[doc = include_str!("../README.md")]
pub struct ReadmeSnippets;

pub use compose::check_all;
pub use config::{Config, FailureMode, LimiterConfig};
pub use error::{BackendError, ConfigError, Error, Result};
pub use key::{encode_part, hash_key, hash_key_with_secret, StateKey, MAX_ENCODED_LEN};
pub use limiter::{wait_for_releases, Limiter, LimiterState, Permit};
pub use metrics::MetricsSnapshot;
pub use registry::{acquire, default_registry, set_default_registry, try_acquire, Registry};
