//! The async trait every engine implements, and the values its operations exchange.
//!
//! An engine owns the state of many limiters in one backend and makes each
//! decision atomically there, with the backend's clock (DESIGN.md §3.5). It
//! knows nothing of waiting, timeouts, metrics recording or failure modes:
//! those live in [`Limiter`](crate::Limiter), once for every engine.
//!
//! Durations cross this boundary, never instants: the backend decides "the
//! slot begins in 40 ms" on its own clock and the caller sleeps 40 ms on its
//! own, so skewed host clocks cannot widen a limit.

mod holder;
pub mod memory;
mod signal;

pub use holder::HolderId;
pub use signal::{ReleaseHub, ReleaseSignal};

use crate::config::{ConcurrencySpec, RateSpec};
use crate::error::BackendError;
use crate::key::StateKey;
use crate::metrics::Metrics;
use async_trait::async_trait;
use std::fmt::Debug;
use std::time::Duration;

/// The outcome of a rate reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reservation {
    /// A slot is reserved; it begins `wait` after the decision.
    Granted {
        /// Time until the reserved slot (zero: now).
        wait: Duration,
    },
    /// No slot within the caller's bound; nothing was reserved.
    Denied {
        /// Time until the earliest slot.
        retry_after: Duration,
    },
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
/// backend allows, one round trip (DESIGN.md §3.3).
#[async_trait]
pub trait Engine: Send + Sync + Debug + 'static {
    /// The engine kind (`memory`, `redis`, ...), for messages and logs.
    fn kind(&self) -> &'static str;

    /// Reserves the earliest rate slot for `ctx.key` that begins at most
    /// `max_wait` from now, or reserves nothing and says when the earliest is.
    async fn reserve(
        &self,
        ctx: Ctx<'_>,
        rate: &RateSpec,
        max_wait: Duration,
    ) -> Result<Reservation, BackendError>;

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
}
