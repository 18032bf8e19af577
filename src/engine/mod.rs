//! The async trait every engine implements, and the values its operations exchange.
//!
//! An engine owns the state of many limiters in one backend and makes each
//! decision atomically there, with the backend's clock (docs/design.md, Promises: 5). It
//! knows nothing of waiting, timeouts, metrics recording or failure modes:
//! those live in [`Limiter`](crate::Limiter), once for every engine.
//!
//! Durations cross this boundary, never instants: the backend decides "the
//! slot begins in 40 ms" on its own clock and the caller sleeps 40 ms on its
//! own, so skewed host clocks cannot widen a limit.

mod holder;
pub mod memory;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "redis")]
pub mod redis;
mod signal;
#[cfg(any(feature = "postgres", feature = "nats"))]
mod stripes;
mod wire;

pub use holder::HolderId;
#[cfg(any(feature = "redis", feature = "postgres", feature = "nats"))]
pub(crate) use signal::{Listening, ReleaseListener};
pub use signal::{ReleaseHub, ReleaseSignal};
#[cfg(any(feature = "redis", feature = "postgres"))]
pub(crate) use wire::max_wait_arg;
#[cfg(any(feature = "redis", feature = "postgres"))]
pub(crate) use wire::policy_window_args;
pub use wire::{script_args, RateArgs};

use crate::config::store::{SettingError, StoreConfig};
use crate::error::BackendError;
use crate::key::StateKey;
use crate::metrics::Metrics;
pub use crate::policy::decide::{PolicyOutcome, WindowOutcome};
use crate::policy::rule::WindowRule;
use crate::quota::{ConcurrencySpec, LimiterSpec, RateSpec};
use async_trait::async_trait;
use std::fmt::Debug;
use std::time::Duration;

/// Engines that compute in whole microseconds (Redis and PostgreSQL) take
/// token-bucket rates up to this; a faster rate would round to it silently.
pub const MAX_RATE_MICROSECOND_ENGINES: f64 = 1e6;

/// What an engine that counts whole microseconds cannot store exactly is
/// refused, naming the field and the supported range, rather than rounded.
#[cfg_attr(not(any(feature = "redis", feature = "postgres")), allow(dead_code))]
pub(crate) fn check_microsecond_rate(
    spec: &LimiterSpec,
    store: &StoreConfig,
) -> Result<(), SettingError> {
    match spec.rate {
        Some(RateSpec::TokenBucket(g)) if g.emission_ns() < 1_000 => Err((
            "rate_per_second",
            format!(
                "must be at most {MAX_RATE_MICROSECOND_ENGINES:e} with store `{}` (engine {} counts whole microseconds), got {:.0}; use the memory or nats engine for faster rates",
                spec.store,
                store.engine.as_str(),
                1e9 / g.emission_ns() as f64
            ),
        )),
        _ => Ok(()),
    }
}

/// The outcome of a rate reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reservation {
    /// A slot is reserved; it begins `wait` after the decision.
    Granted {
        /// Time until the reserved slot (zero: now).
        wait: Duration,
        /// When the slot begins on the backend's wall clock, in microseconds
        /// since the Unix epoch: the server's clock for Redis, Postgres and
        /// NATS, the engine's own for memory.
        slot_unix_us: Option<u64>,
    },
    /// No slot within the caller's bound; nothing was reserved.
    Denied {
        /// Time until the earliest slot.
        retry_after: Duration,
    },
}

/// One request of several decided together on one key (see
/// [`Engine::reserve_many`]): what [`Engine::reserve_n`] takes, without the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateRequest {
    /// Tokens (or window grants) the request takes at once.
    pub cost: u32,
    /// The latest its slot may begin, from the decision.
    pub max_wait: Duration,
}

/// The outcome of an all-or-nothing reservation over several keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchReservation {
    /// Every key reserved a slot; the last of them begins `wait` after the decision.
    Granted {
        /// Time until every reserved slot has begun.
        wait: Duration,
    },
    /// Item `index` had no slot within the bound; no key reserved anything.
    Denied {
        /// Which item refused.
        index: usize,
        /// Time until its earliest slot.
        retry_after: Duration,
    },
}

/// The outcome of asking for a concurrency slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseOutcome {
    /// The holder has a slot.
    Acquired {
        /// Holders now, this one included.
        holders: u32,
    },
    /// Every slot is taken.
    Full {
        /// Time until the earliest lease runs out if nobody releases first.
        retry_after: Duration,
    },
}

/// A rate limit's state, read without consuming anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateState {
    /// A token bucket.
    TokenBucket {
        /// Tokens that could be taken at once.
        remaining: u32,
        /// The bucket's size.
        burst: u32,
        /// Time until the bucket is full.
        reset_after: Duration,
        /// Time until the next token (zero when one is available).
        retry_after: Duration,
    },
    /// An exact sliding window.
    SlidingWindow {
        /// Grants in the window ending now.
        count: u32,
        /// The configured limit.
        limit: u32,
        /// Grants possible at once.
        remaining: u32,
        /// Time until the window is empty.
        reset_after: Duration,
        /// Time until one more grant is possible (zero when one is).
        retry_after: Duration,
    },
}

impl RateState {
    /// The state a reader of `cell` sees at `now_ns` (nothing consumed).
    pub fn of_cell(rate: &RateSpec, cell: &crate::quota::RateCell, now_ns: u64) -> Self {
        match rate {
            RateSpec::TokenBucket(g) => RateState::of_bucket(g, cell.tat, now_ns),
            RateSpec::SlidingWindow(w) => RateState::of_window(w, &cell.grants, now_ns),
        }
    }

    /// A token bucket's state at `now_ns`, given its theoretical arrival time
    /// (`None`: the key has no state, the bucket is full).
    pub fn of_bucket(g: &crate::gcra::Gcra, tat_ns: Option<u64>, now_ns: u64) -> Self {
        let s = g.state(tat_ns, now_ns);
        RateState::TokenBucket {
            remaining: s.remaining,
            burst: g.burst(),
            reset_after: Duration::from_nanos(s.reset_after_ns),
            retry_after: Duration::from_nanos(s.retry_after_ns),
        }
    }

    /// A sliding window's state at `now_ns`, given its grant times (ns).
    pub fn of_window(
        w: &crate::window::SlidingWindow,
        grants_ns: &std::collections::VecDeque<u64>,
        now_ns: u64,
    ) -> Self {
        let s = w.state(grants_ns, now_ns);
        RateState::SlidingWindow {
            count: s.count,
            limit: w.limit(),
            remaining: s.remaining,
            reset_after: Duration::from_nanos(s.reset_after_ns),
            retry_after: Duration::from_nanos(s.retry_after_ns),
        }
    }
}

/// A concurrency limit's state, read without taking a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConcurrencyState {
    /// Live holders.
    pub holders: u32,
    /// Slots.
    pub max: u32,
    /// Time until the earliest lease runs out, when there is a holder.
    pub next_expiry: Option<Duration>,
}

/// One policy check, as an engine receives it (see [`Engine::check_policy`]).
#[derive(Debug, Clone, Copy)]
pub struct PolicyCheck<'a> {
    /// The windows of the policy (of the request's tier), in order.
    pub rules: &'a [WindowRule],
    /// What the request costs in every window.
    pub cost: u32,
    /// Decide and count as enforcing would, but never ban (a policy in monitor mode).
    pub shadow: bool,
    /// Store the outcome; false for a dry run.
    pub commit: bool,
}

/// A change to a policy's allow or deny list in the store (see
/// [`Engine::list_change`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListChange<'a> {
    /// Adds (or renews) `entry`, expiring after `ttl` (`None`: never).
    Add {
        /// The entry: an exact key or a CIDR range, validated by the caller.
        entry: &'a str,
        /// How long it holds.
        ttl: Option<Duration>,
    },
    /// Removes `entry`.
    Remove {
        /// The entry, as it was added.
        entry: &'a str,
    },
}

/// One entry of a list in the store, with the time it has left (`None`: no expiry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListEntry {
    /// The entry as added.
    pub entry: String,
    /// Until it expires.
    pub left: Option<Duration>,
}

/// What an engine needs besides the request: where the state lives and where to count.
#[derive(Debug, Clone, Copy)]
pub struct Ctx<'a> {
    /// The state's address.
    pub key: &'a StateKey,
    /// The limiter's metrics, for engine-level events such as CAS conflicts.
    pub metrics: &'a Metrics,
}

/// One backend holding limiter state. Implemented by the memory, Redis, NATS
/// and Postgres engines; each decision is atomic in the backend and, where the
/// backend allows, one round trip (docs/design.md, Promises: 3).
#[async_trait]
pub trait Engine: Send + Sync + Debug + 'static {
    /// The engine kind (`memory`, `redis`, ...), for messages and logs.
    fn kind(&self) -> &'static str;

    /// Whether [`reserve_all`](Self::reserve_all) can decide several keys
    /// atomically. `check_all` refuses, with advice, on an engine that cannot.
    fn atomic_batches(&self) -> bool {
        true
    }

    /// How far ahead of now this engine can hold a reservation of `rate`:
    /// a store that forgets untouched keys (NATS KV's max age) would forget
    /// a slot reserved further ahead and admit it twice. `None`: no bound.
    /// The limiter never asks for a slot beyond it; a caller willing to wait
    /// longer sleeps until its slot comes within the horizon, then reserves.
    fn reservation_horizon(&self, _rate: &RateSpec) -> Option<Duration> {
        None
    }

    /// Reserves the earliest rate slot for `ctx.key`, for a request costing
    /// `cost` tokens of a bucket (or grants of a window) at once, that
    /// begins at most `max_wait` from now; or reserves nothing and says when
    /// the earliest is. Atomic in the store. The limiter never asks a cost
    /// above [`RateSpec::capacity`]; an engine refuses one (`Denied`).
    async fn reserve_n(
        &self,
        ctx: Ctx<'_>,
        rate: &RateSpec,
        cost: u32,
        max_wait: Duration,
    ) -> Result<Reservation, BackendError>;

    /// Whether the limiter should coalesce this process's concurrent
    /// reservations of one key into one [`reserve_many`](Self::reserve_many)
    /// call: true where a round trip costs far more than the decision
    /// (docs/design.md, Coalescing).
    fn coalesces(&self) -> bool {
        false
    }

    /// Decides `requests` on `ctx.key` in their order, each exactly as a
    /// [`reserve_n`](Self::reserve_n) call made after the one before it
    /// would be, and answers one outcome per request. An engine that can
    /// makes it one atomic step (one script, one statement, one
    /// compare-and-set); the default calls `reserve_n` for each, and on a
    /// failure fails them all (what was reserved before it stays spent).
    async fn reserve_many(
        &self,
        ctx: Ctx<'_>,
        rate: &RateSpec,
        requests: &[RateRequest],
    ) -> Result<Vec<Reservation>, BackendError> {
        let mut out = Vec::with_capacity(requests.len());
        for r in requests {
            out.push(self.reserve_n(ctx, rate, r.cost, r.max_wait).await?);
        }
        Ok(out)
    }

    /// [`reserve_n`](Self::reserve_n) without awaiting, where the engine
    /// decides in this process (the memory engine); `None` asks the caller
    /// to await `reserve_n` instead. Saves the boxed future of an async
    /// trait call, a measurable share of an in-process decision; and since
    /// such an answer takes well under the microsecond the metrics count
    /// waits in, the limiter takes one clock reading fewer for a grant it
    /// gave without waiting.
    fn reserve_n_now(
        &self,
        _ctx: Ctx<'_>,
        _rate: &RateSpec,
        _cost: u32,
        _max_wait: Duration,
    ) -> Option<Reservation> {
        None
    }

    /// [`reserve_n`](Self::reserve_n) for one token.
    async fn reserve(
        &self,
        ctx: Ctx<'_>,
        rate: &RateSpec,
        max_wait: Duration,
    ) -> Result<Reservation, BackendError> {
        self.reserve_n(ctx, rate, 1, max_wait).await
    }

    /// Reserves one slot on every item, all within `max_wait`, or none at all.
    async fn reserve_all(
        &self,
        items: &[(Ctx<'_>, RateSpec)],
        max_wait: Duration,
    ) -> Result<BatchReservation, BackendError>;

    /// The rate state of `ctx.key`.
    async fn rate_state(&self, ctx: Ctx<'_>, rate: &RateSpec) -> Result<RateState, BackendError>;

    /// Takes a concurrency slot for `holder`, leased for `spec.lease`.
    /// Idempotent: a holder that already has a slot keeps it (renewed).
    async fn acquire_lease(
        &self,
        ctx: Ctx<'_>,
        holder: &HolderId,
        spec: &ConcurrencySpec,
    ) -> Result<LeaseOutcome, BackendError>;

    /// Extends `holder`'s lease by `lease` from now; false when it was lost.
    async fn renew_lease(
        &self,
        ctx: Ctx<'_>,
        holder: &HolderId,
        lease: Duration,
    ) -> Result<bool, BackendError>;

    /// Frees `holder`'s slot and wakes waiters; false when it held none.
    async fn release_lease(&self, ctx: Ctx<'_>, holder: &HolderId) -> Result<bool, BackendError>;

    /// Frees `holder`'s slot without awaiting, where the engine can (an
    /// in-process engine); `None` asks the caller to use
    /// [`release_lease`](Self::release_lease) instead.
    fn release_lease_now(&self, _ctx: Ctx<'_>, _holder: &HolderId) -> Option<bool> {
        None
    }

    /// The concurrency state of `ctx.key`.
    async fn lease_state(
        &self,
        ctx: Ctx<'_>,
        spec: &ConcurrencySpec,
    ) -> Result<ConcurrencyState, BackendError>;

    /// A signal that fires whenever a slot of `ctx.key` is released. Taken
    /// before an attempt, it cannot miss a release that happens after it.
    async fn subscribe_releases(&self, ctx: Ctx<'_>) -> Result<ReleaseSignal, BackendError>;

    /// Whether this engine decides policies ([`check_policy`](Self::check_policy)).
    /// A registry refuses, naming the store, a policy on one that does not.
    fn runs_policies(&self) -> bool {
        false
    }

    /// Whether this engine can hold `spec`'s state (a store that forgets
    /// keys, or holds a key in one bounded value, sets limits); `Err` says
    /// what to change. The registry asks when it builds the policy.
    fn check_policy_spec(&self, _spec: &crate::policy::PolicySpec) -> Result<(), String> {
        Ok(())
    }

    /// One policy check on `ctx.key` (docs/design.md, Policies): the key's
    /// ban, then every window of `check.rules` at once, all-or-nothing, in
    /// one step of the store; with `check.commit` false nothing is stored
    /// (a dry run). The default refuses, for engines that do not run
    /// policies.
    async fn check_policy(
        &self,
        _ctx: Ctx<'_>,
        _check: &PolicyCheck<'_>,
    ) -> Result<PolicyOutcome, BackendError> {
        Err(BackendError::new(
            self.kind(),
            "this engine does not run policies yet; keep policies on a memory store",
        ))
    }

    /// [`check_policy`](Self::check_policy) without awaiting, where the
    /// engine decides in this process (the memory engine); `None` asks the
    /// caller to await `check_policy` instead.
    fn check_policy_now(&self, _ctx: Ctx<'_>, _check: &PolicyCheck<'_>) -> Option<PolicyOutcome> {
        None
    }

    /// Bans `ctx.key` of a policy for `duration` from now (a longer ban
    /// already there stays), or lifts its ban (`None`). Returns whether a
    /// ban held before.
    async fn set_ban(
        &self,
        _ctx: Ctx<'_>,
        _duration: Option<Duration>,
    ) -> Result<bool, BackendError> {
        Err(BackendError::new(
            self.kind(),
            "this engine does not run policies yet; keep policies on a memory store",
        ))
    }

    /// Changes the list at `ctx.key` (a policy's exempt or deny list kept
    /// in the store, so a change made on one host holds on every host);
    /// returns whether the list changed. The default refuses, for engines
    /// that do not run policies.
    async fn list_change(
        &self,
        _ctx: Ctx<'_>,
        _change: ListChange<'_>,
    ) -> Result<bool, BackendError> {
        Err(BackendError::new(
            self.kind(),
            "this engine keeps no policy lists; use a memory, redis, postgres or nats store",
        ))
    }

    /// The live entries of the list at `ctx.key`, in no particular order
    /// (expired ones are left out, and dropped where the store can).
    async fn list_read(&self, _ctx: Ctx<'_>) -> Result<Vec<ListEntry>, BackendError> {
        Err(BackendError::new(
            self.kind(),
            "this engine keeps no policy lists; use a memory, redis, postgres or nats store",
        ))
    }

    /// What this store is, for `ratesync check`: the server and its
    /// version, the schema or bucket in use. Asks the server, so a store
    /// that stopped answering fails here.
    async fn describe(&self) -> Result<String, BackendError> {
        Ok(self.kind().to_string())
    }

    /// Forgets `ctx.key`'s state: its rate state and every lease (the
    /// holders lose their slots; waiters are woken). For operators
    /// (`ratesync reset`); returns how many stored entries went. The
    /// default refuses, for engines that cannot.
    async fn reset(&self, _ctx: Ctx<'_>) -> Result<u64, BackendError> {
        Err(BackendError::new(
            self.kind(),
            "this engine cannot reset a key's state",
        ))
    }
}

/// Runs one backend request of `engine` within `limit` (the store's
/// `response_timeout`), or fails naming that setting so the user knows what
/// to raise.
#[cfg(any(feature = "postgres", feature = "nats"))]
pub(crate) async fn within<T>(
    engine: &'static str,
    limit: Duration,
    f: impl std::future::Future<Output = Result<T, BackendError>>,
) -> Result<T, BackendError> {
    tokio::time::timeout(limit, f).await.unwrap_or_else(|_| {
        Err(BackendError::new(
            engine,
            format!(
                "no answer within {:.1} s (response_timeout)",
                limit.as_secs_f64()
            ),
        ))
    })
}

/// A background task that ends with the engine that spawned it.
#[cfg(any(feature = "redis", feature = "postgres", feature = "nats"))]
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

#[cfg(any(feature = "redis", feature = "postgres", feature = "nats"))]
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
