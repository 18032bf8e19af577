//! Integration suite: every engine against its real service, with several OS processes.
//!
//! Each scenario starts `ratesync worker` processes that share one limiter,
//! merges the grants they record and checks the invariants of docs/design.md, Promises.
//! A scenario whose service is unreachable is skipped with a loud message,
//! or fails under `RATESYNC_REQUIRE_SERVICES=1` (as in CI).

mod bench;
mod contract;
mod cross_host;
#[cfg(all(unix, feature = "serve", feature = "sqlite"))]
mod dashboard;
#[cfg(all(feature = "sqlite", feature = "postgres"))]
mod decision_log;
mod hosts;
mod memory;
#[cfg(all(unix, feature = "serve"))]
mod nginx;
mod policy_contract;
mod readme;
mod scenarios;
mod support;

#[cfg(feature = "nats")]
mod nats;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "redis")]
mod redis_cluster;
