//! Limiters and permits: waiting, timeouts, failure modes and metrics recording, once for every engine.
//!
//! A [`Limiter`] asks its engine for decisions and does everything around
//! them: it sleeps until a reserved rate slot begins (docs/design.md, Promises: 4), waits
//! for a released concurrency slot, bounds all of it by a timeout, applies
//! the limiter's failure mode when the store fails, and records metrics.
//!
//! One concept per module: `acquire.rs` is the whole
//! decision and its waiting; `slot.rs` takes a concurrency slot, queueing
//! for a release; `permit.rs` is what a grant hands out and the lease it
//! holds; `release.rs` gives slots back when permits are dropped;
//! `coalesce.rs` decides concurrent reservations of one key in one round trip;
//! `wait.rs` says how long a request may wait and why it got nothing.

mod acquire;
mod coalesce;
mod permit;
mod release;
mod slot;
mod wait;

pub(crate) use permit::give_back;
pub(crate) use permit::LeaseGuard;
pub use permit::Permit;
pub use release::wait_for_releases;
pub(crate) use release::{flush_on_drop, RELEASE_GRACE};
pub(crate) use wait::Exhausted;

use crate::engine::{ConcurrencyState, Ctx, Engine, RateState};
use crate::error::{BackendError, Error, Result};
use crate::key::StateKey;
use crate::metrics::{Metrics, MetricsSnapshot};
use crate::quota::{FailureMode, LimiterSpec};
use std::fmt;
use std::sync::Arc;

/// A named rate and/or concurrency limit, cheap to clone (an `Arc` inside).
///
/// Obtained from a [`Registry`](crate::Registry); [`key`](Self::key) derives
/// a per-key limiter (per user, IP, API key) with the same policy, its own
/// state, and the parent's metrics.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> ratesync::Result<()> {
/// let registry = ratesync::Registry::from_toml_str(r#"
///     [limiters.api]
///     rate_per_second = 100.0
///     burst = 10
///     max_concurrent = 4
/// "#).await?;
/// let api = registry.limiter("api")?;
/// let permit = api.acquire().await?;          // waits for a slot if needed
/// assert!(permit.holds_slot());               // one of the 4 concurrency slots
/// let user = api.key("user:42");              // same policy, its own bucket
/// if let Some(p) = user.try_acquire().await? { // never waits
///     drop(p);
/// }
/// drop(permit);                               // frees the slot
/// assert_eq!(api.metrics().total_acquisitions, 2);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Limiter {
    shared: Arc<Shared>,
    key: StateKey,
}

pub(crate) struct Shared {
    /// Interned (see `crate::interned`): a permit carries it without touching a
    /// reference count.
    pub(crate) name: &'static str,
    pub(crate) spec: LimiterSpec,
    pub(crate) engine: Arc<dyn Engine>,
    pub(crate) metrics: Arc<Metrics>,
    /// First-come, first-served order of this process's concurrency waiters.
    pub(crate) queues: crate::queue::WaitQueues,
    /// This process's rate decisions in flight, per key, and who waits for
    /// the next (see `coalesce.rs`).
    pub(crate) coalescer: coalesce::Coalescer,
}

impl fmt::Debug for Limiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limiter")
            .field("name", &self.shared.name)
            .field("key", &self.key.encoded())
            .field("engine", &self.shared.engine.kind())
            .field("spec", &self.shared.spec)
            .finish()
    }
}

/// A limiter's state, read without consuming anything (see [`Limiter::state`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimiterState {
    /// The rate limit's state, if the limiter has one.
    pub rate: Option<RateState>,
    /// The concurrency limit's state, if the limiter has one.
    pub concurrency: Option<ConcurrencyState>,
}

impl Limiter {
    pub(crate) fn new(
        name: &str,
        spec: LimiterSpec,
        engine: Arc<dyn Engine>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            key: StateKey::new(name),
            shared: Arc::new(Shared {
                name: crate::interned::interned(name),
                spec,
                engine,
                metrics,
                queues: Default::default(),
                coalescer: Default::default(),
            }),
        }
    }

    /// The limiter's name.
    pub fn name(&self) -> &str {
        self.shared.name
    }

    /// The validated policy.
    pub fn spec(&self) -> &LimiterSpec {
        &self.shared.spec
    }

    /// Where this limiter's state lives in the store.
    pub fn state_key(&self) -> &StateKey {
        &self.key
    }

    /// A limiter with the same policy and metrics whose state is its own,
    /// for `key` (a user id, an IP, an API key; any string is safe).
    /// Calling `key` on a per-key limiter narrows it further.
    pub fn key(&self, key: impl AsRef<str>) -> Limiter {
        Limiter {
            shared: self.shared.clone(),
            key: self.key.child(key.as_ref()),
        }
    }

    /// The live counters behind [`metrics`](Self::metrics).
    pub(crate) fn metrics_handle(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// A snapshot of the metrics of this limiter (shared with its per-key children).
    pub fn metrics(&self) -> MetricsSnapshot {
        self.shared.metrics.snapshot()
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
    }

    pub(crate) fn ctx(&self) -> Ctx<'_> {
        Ctx {
            key: &self.key,
            metrics: &self.shared.metrics,
        }
    }

    /// Applies the failure mode to a store error: `Ok` to admit (fail open),
    /// `Err` to deny (fail closed). Counted and logged either way.
    pub(crate) fn backend_failure(&self, e: BackendError, op: &'static str) -> Result<()> {
        let s = &self.shared;
        s.metrics.record_backend_error();
        if e.cas_exhausted {
            tracing::warn!(limiter = %s.name, store = %s.spec.store, op, error = %e, "compare-and-set retries exhausted");
        }
        match s.spec.on_backend_error {
            FailureMode::FailOpen => {
                tracing::warn!(limiter = %s.name, store = %s.spec.store, op, error = %e,
                    "store failed; admitting (on_backend_error = fail_open)");
                Ok(())
            }
            FailureMode::FailClosed => {
                tracing::error!(limiter = %s.name, store = %s.spec.store, op, error = %e,
                    "store failed; denying (on_backend_error = fail_closed)");
                Err(self.backend_error(e))
            }
        }
    }

    /// `e` as this limiter's [`Error::Backend`].
    fn backend_error(&self, e: BackendError) -> Error {
        Error::Backend {
            limiter: self.shared.name.to_string(),
            store: self.shared.spec.store.clone(),
            source: e,
        }
    }

    /// A store failure outside a decision (reading state, resetting,
    /// releasing), where no failure mode applies: counted in
    /// `backend_errors` and returned.
    pub(crate) fn store_failed(&self, e: BackendError) -> Error {
        self.shared.metrics.record_backend_error();
        self.backend_error(e)
    }

    /// Forgets this limiter's state for its key (for a per-key limiter, call
    /// it on `limiter.key(k)`): the bucket is full again, the window empty,
    /// no slot held. Permits still out lose their slots, and learn it at
    /// their next renewal ([`Permit::lost`]); waiters are woken. Returns how
    /// many stored entries were removed. Every engine supports it
    /// (`ratesync reset LIMITER [--key K]`).
    pub async fn reset(&self) -> Result<u64> {
        let reset = self.shared.engine.reset(self.ctx()).await;
        reset.map_err(|e| self.store_failed(e))
    }

    /// Reads this limiter's state (remaining tokens or window count, holders,
    /// reset time) without consuming anything. For a per-key limiter, call it
    /// on `limiter.key(k)`.
    pub async fn state(&self) -> Result<LimiterState> {
        let s = &self.shared;
        let wrap = |e| self.store_failed(e);
        let rate = match &s.spec.rate {
            Some(r) => Some(s.engine.rate_state(self.ctx(), r).await.map_err(wrap)?),
            None => None,
        };
        let concurrency = match &s.spec.concurrency {
            Some(c) => Some(s.engine.lease_state(self.ctx(), c).await.map_err(wrap)?),
            None => None,
        };
        Ok(LimiterState { rate, concurrency })
    }
}
