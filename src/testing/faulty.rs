//! A store with faults you switch on: lost or failing lease renewals, late
//! answers to slot requests, compare-and-set conflicts. For testing how your
//! code (and ratesync) copes with a store that misbehaves.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! use ratesync::testing::{FaultyStore, Renewals};
//! use std::{sync::Arc, time::Duration};
//! let store = Arc::new(FaultyStore::memory());
//! let reg = ratesync::Registry::new();
//! reg.add_store("flaky", store.clone());
//! let jobs = reg
//!     .register("jobs", ratesync::LimiterConfig::concurrency(1).with_store("flaky"))
//!     .unwrap();
//! let permit = jobs.acquire().await.unwrap();
//! store.set_renewals(Renewals::Lost); // the store forgets the lease
//! permit.lost().await;                // told at the next renewal
//! assert!(!permit.is_held());
//! # }
//! ```

use crate::engine::memory::MemoryEngine;
use crate::engine::{
    BatchReservation, ConcurrencyState, Ctx, Engine, HolderId, LeaseOutcome, ListChange, ListEntry,
    PolicyCheck, PolicyOutcome, RateRequest, RateState, ReleaseSignal, Reservation,
};
use crate::error::BackendError;
use crate::quota::{ConcurrencySpec, RateSpec};
use async_trait::async_trait;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What lease renewals do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Renewals {
    /// Reach the store (the default).
    Pass = 0,
    /// Answer that the lease is gone.
    Lost = 1,
    /// Fail with a backend error.
    Fail = 2,
    /// Never answer.
    Hang = 3,
}

/// A store that forwards to another and injects the faults switched on
/// (see the module docs).
#[derive(Debug)]
pub struct FaultyStore {
    inner: Arc<dyn Engine>,
    renewals: AtomicU8,
    lease_answer_delay_us: AtomicU64,
    cas_failures_per_reserve: AtomicU64,
    reserve_answer_delay_us: AtomicU64,
    coalescing: AtomicBool,
    rate_round_trips: AtomicU64,
    policies_fail: AtomicBool,
}

impl FaultyStore {
    /// Faults in front of `inner`, all off.
    pub fn new(inner: Arc<dyn Engine>) -> Self {
        Self {
            inner,
            renewals: AtomicU8::new(Renewals::Pass as u8),
            lease_answer_delay_us: AtomicU64::new(0),
            cas_failures_per_reserve: AtomicU64::new(0),
            reserve_answer_delay_us: AtomicU64::new(0),
            coalescing: AtomicBool::new(false),
            rate_round_trips: AtomicU64::new(0),
            policies_fail: AtomicBool::new(false),
        }
    }

    /// Faults in front of a fresh in-memory engine.
    pub fn memory() -> Self {
        Self::new(Arc::new(MemoryEngine::new()))
    }

    /// Makes lease renewals pass, report the lease lost, fail or hang.
    pub fn set_renewals(&self, r: Renewals) {
        self.renewals.store(r as u8, Ordering::SeqCst);
    }

    /// Delays every answer to a slot request by `d`, after the store has
    /// decided: a caller that gives up meanwhile leaves a request in flight.
    pub fn delay_lease_answers(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.lease_answer_delay_us.store(us, Ordering::SeqCst);
    }

    /// Delays every answer to a rate decision by `d`, after the store has
    /// decided, as a distant store would.
    pub fn delay_reserve_answers(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.reserve_answer_delay_us.store(us, Ordering::SeqCst);
    }

    /// Makes limiters coalesce concurrent reservations of one key, as they
    /// do on the network engines, even when the inner store does not ask
    /// for it (the memory engine); `false` leaves it to the inner store.
    pub fn set_coalescing(&self, on: bool) {
        self.coalescing.store(on, Ordering::SeqCst);
    }

    /// Rate decisions sent to the inner store so far (one per
    /// `reserve_n`, one per coalesced batch).
    pub fn rate_round_trips(&self) -> u64 {
        self.rate_round_trips.load(Ordering::SeqCst)
    }

    async fn answer_reserve<T>(&self, answer: T) -> T {
        self.rate_round_trips.fetch_add(1, Ordering::SeqCst);
        let delay = self.reserve_answer_delay_us.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_micros(delay)).await;
        }
        answer
    }

    /// Makes every policy operation (checks, bans, lists) and the store's
    /// health answer (`describe`) fail with a backend error, as a store that
    /// went away would; `false` lets them through again. Policy checks also take the delay of
    /// [`delay_reserve_answers`](Self::delay_reserve_answers).
    pub fn fail_policies(&self, on: bool) {
        self.policies_fail.store(on, Ordering::SeqCst);
    }

    fn policy_fault(&self) -> Result<(), BackendError> {
        if self.policies_fail.load(Ordering::SeqCst) {
            return Err(BackendError::new(
                self.kind(),
                "injected: the store is unreachable",
            ));
        }
        Ok(())
    }

    /// Reports `n` compare-and-set conflicts with every rate decision, as a
    /// contended CAS store would (they show in `cas_failures`).
    pub fn report_cas_failures(&self, n: u64) {
        self.cas_failures_per_reserve.store(n, Ordering::SeqCst);
    }
}

#[async_trait]
impl Engine for FaultyStore {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    async fn describe(&self) -> Result<String, BackendError> {
        self.policy_fault()?;
        self.inner.describe().await
    }

    fn atomic_batches(&self) -> bool {
        self.inner.atomic_batches()
    }

    fn reservation_horizon(&self, rate: &RateSpec) -> Option<Duration> {
        self.inner.reservation_horizon(rate)
    }

    async fn reserve_n(
        &self,
        ctx: Ctx<'_>,
        rate: &RateSpec,
        cost: u32,
        max_wait: Duration,
    ) -> Result<Reservation, BackendError> {
        let n = self.cas_failures_per_reserve.load(Ordering::SeqCst);
        if n > 0 {
            ctx.metrics.record_cas_failures(n);
        }
        let answer = self.inner.reserve_n(ctx, rate, cost, max_wait).await;
        self.answer_reserve(answer).await
    }

    fn coalesces(&self) -> bool {
        self.coalescing.load(Ordering::SeqCst) || self.inner.coalesces()
    }

    async fn reserve_many(
        &self,
        ctx: Ctx<'_>,
        rate: &RateSpec,
        requests: &[RateRequest],
    ) -> Result<Vec<Reservation>, BackendError> {
        let n = self.cas_failures_per_reserve.load(Ordering::SeqCst);
        if n > 0 {
            ctx.metrics.record_cas_failures(n);
        }
        let answer = self.inner.reserve_many(ctx, rate, requests).await;
        self.answer_reserve(answer).await
    }

    async fn reserve_all(
        &self,
        items: &[(Ctx<'_>, RateSpec)],
        max_wait: Duration,
    ) -> Result<BatchReservation, BackendError> {
        self.inner.reserve_all(items, max_wait).await
    }

    async fn rate_state(&self, ctx: Ctx<'_>, rate: &RateSpec) -> Result<RateState, BackendError> {
        self.inner.rate_state(ctx, rate).await
    }

    async fn acquire_lease(
        &self,
        ctx: Ctx<'_>,
        holder: &HolderId,
        spec: &ConcurrencySpec,
    ) -> Result<LeaseOutcome, BackendError> {
        let answer = self.inner.acquire_lease(ctx, holder, spec).await;
        let delay = self.lease_answer_delay_us.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_micros(delay)).await;
        }
        answer
    }

    async fn renew_lease(
        &self,
        ctx: Ctx<'_>,
        holder: &HolderId,
        lease: Duration,
    ) -> Result<bool, BackendError> {
        match self.renewals.load(Ordering::SeqCst) {
            1 => Ok(false),
            2 => Err(BackendError::new("faulty", "renewal failed (injected)")),
            3 => std::future::pending().await,
            _ => self.inner.renew_lease(ctx, holder, lease).await,
        }
    }

    async fn release_lease(&self, ctx: Ctx<'_>, holder: &HolderId) -> Result<bool, BackendError> {
        self.inner.release_lease(ctx, holder).await
    }

    fn release_lease_now(&self, ctx: Ctx<'_>, holder: &HolderId) -> Option<bool> {
        self.inner.release_lease_now(ctx, holder)
    }

    async fn lease_state(
        &self,
        ctx: Ctx<'_>,
        spec: &ConcurrencySpec,
    ) -> Result<ConcurrencyState, BackendError> {
        self.inner.lease_state(ctx, spec).await
    }

    async fn subscribe_releases(&self, ctx: Ctx<'_>) -> Result<ReleaseSignal, BackendError> {
        self.inner.subscribe_releases(ctx).await
    }

    async fn reset(&self, ctx: Ctx<'_>) -> Result<u64, BackendError> {
        self.inner.reset(ctx).await
    }

    fn runs_policies(&self) -> bool {
        self.inner.runs_policies()
    }

    fn check_policy_spec(&self, spec: &crate::policy::PolicySpec) -> Result<(), String> {
        self.inner.check_policy_spec(spec)
    }

    // No `check_policy_now`: every check goes through the faults below.
    async fn check_policy(
        &self,
        ctx: Ctx<'_>,
        check: &PolicyCheck<'_>,
    ) -> Result<PolicyOutcome, BackendError> {
        self.policy_fault()?;
        let out = self.inner.check_policy(ctx, check).await;
        self.answer_reserve(out).await
    }

    async fn set_ban(
        &self,
        ctx: Ctx<'_>,
        duration: Option<Duration>,
    ) -> Result<bool, BackendError> {
        self.policy_fault()?;
        self.inner.set_ban(ctx, duration).await
    }

    async fn list_change(
        &self,
        ctx: Ctx<'_>,
        change: ListChange<'_>,
    ) -> Result<bool, BackendError> {
        self.policy_fault()?;
        self.inner.list_change(ctx, change).await
    }

    async fn list_read(&self, ctx: Ctx<'_>) -> Result<Vec<ListEntry>, BackendError> {
        self.policy_fault()?;
        self.inner.list_read(ctx).await
    }
}
