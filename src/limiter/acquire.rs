//! The whole decision: a concurrency slot first (so no rate token is spent
//! while queueing for a slot), then a rate slot, then the sleep until it.

use super::permit::give_back;
use super::wait::{Deadline, Exhausted, Refusal, Wait};
use super::{LeaseGuard, Limiter, Permit};
use crate::engine::Reservation;
use crate::error::{Error, Result};
use std::time::Duration;
use tokio::time::Instant;

impl Limiter {
    /// Waits for a permit, bounded by the limiter's configured `timeout`
    /// (forever when it has none).
    ///
    /// A rate slot is reserved at once and the call sleeps until it begins;
    /// if the earliest slot lies beyond the timeout, nothing is reserved and
    /// the call fails at once with [`Error::Timeout`]. Dropping the future
    /// while it waits leaves no concurrency slot held (a rate slot already
    /// reserved stays spent: that errs towards admitting less).
    pub async fn acquire(&self) -> Result<Permit> {
        self.acquire_n(1).await
    }

    /// Like [`acquire`](Self::acquire), bounded by `timeout` instead of the configured one.
    pub async fn acquire_timeout(&self, timeout: Duration) -> Result<Permit> {
        self.acquire_n_timeout(1, timeout).await
    }

    /// A permit if one is free right now, without waiting; `None` otherwise.
    pub async fn try_acquire(&self) -> Result<Option<Permit>> {
        self.try_acquire_n(1).await
    }

    /// Like [`acquire`](Self::acquire) for a request that costs `n` tokens
    /// of the rate limit at once (bytes, an LLM call's tokens, a batch):
    /// one slot for all `n`, reserved atomically by the store, slept until
    /// it begins. `n` above the burst (a window's limit) can never be
    /// granted and fails at once with [`Error::InsufficientCapacity`]; so
    /// does `n = 0`. A concurrency cap still counts one slot per permit.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> ratesync::Result<()> {
    /// let registry = ratesync::Registry::from_toml_str(
    ///     "[limiters.bytes]\nrate_per_second = 1000.0\nburst = 1000",
    /// ).await?;
    /// let bytes = registry.limiter("bytes")?;
    /// let upload = bytes.acquire_n(600).await?;             // 600 of the 1,000 at once
    /// assert!(bytes.try_acquire_n(600).await?.is_none());   // 400 left: not now
    /// assert!(matches!(bytes.acquire_n(1001).await,         // never: above the burst
    ///     Err(ratesync::Error::InsufficientCapacity { capacity: 1000, .. })));
    /// # drop(upload); Ok(()) }
    /// ```
    pub async fn acquire_n(&self, n: u32) -> Result<Permit> {
        match self.shared.spec.timeout {
            Some(t) => self.acquire_n_timeout(n, t).await,
            None => self.run(Deadline::NEVER, n).await,
        }
    }

    /// Like [`acquire_n`](Self::acquire_n), bounded by `timeout` instead of the configured one.
    pub async fn acquire_n_timeout(&self, n: u32, timeout: Duration) -> Result<Permit> {
        self.run(Deadline::after(timeout), n).await
    }

    /// Like [`try_acquire`](Self::try_acquire) for a request that costs `n`
    /// (see [`acquire_n`](Self::acquire_n)): a permit if `n` are free now.
    pub async fn try_acquire_n(&self, n: u32) -> Result<Option<Permit>> {
        self.check_cost(n)?;
        if let Some(answer) = self.try_decide_here(n) {
            return Ok(answer);
        }
        match self.obtain(Wait::No, n).await? {
            Ok(permit) => Ok(Some(permit)),
            Err(_) => {
                self.shared.metrics.record_timeout();
                Ok(None)
            }
        }
    }

    /// `try_acquire_n` answered without awaiting anything, where it can be:
    /// a rate limit alone, on an engine that decides in this process (the
    /// memory engine). `None` leaves the call to [`obtain`](Self::obtain).
    ///
    /// The engine's clock reading is the only one taken: the grant is
    /// counted at the slot time the engine reports (its own clock, "now"
    /// since nothing may wait). With the async path's state machine and its
    /// second clock reading gone this is about a third of the call's time
    /// (memory bench, 1 key: 167 ns before; docs/scaling.md has the figures).
    fn try_decide_here(&self, cost: u32) -> Option<Option<Permit>> {
        let spec = &self.shared.spec;
        let rate = spec.rate.as_ref().filter(|_| spec.concurrency.is_none())?;
        let answer = self
            .shared
            .engine
            .reserve_n_now(self.ctx(), rate, cost, Duration::ZERO)?;
        Some(match answer {
            Reservation::Granted { slot_unix_us, .. } => {
                let mut permit = match slot_unix_us {
                    Some(at_us) => {
                        self.shared.metrics.record_instant_grant(at_us / 1000);
                        Permit::new(self.shared.name, None, Duration::ZERO)
                    }
                    // An engine without a slot time: the grant's own clock reading.
                    None => self.grant(None, Duration::ZERO),
                };
                permit.slot_unix_us = slot_unix_us;
                Some(permit)
            }
            Reservation::Denied { .. } => {
                self.shared.metrics.record_timeout();
                None
            }
        })
    }

    /// Refuses at once a weight the limit can never grant.
    fn check_cost(&self, n: u32) -> Result<()> {
        if n == 1 {
            return Ok(());
        }
        let capacity = match &self.shared.spec.rate {
            Some(rate) => rate.capacity(),
            None => {
                return Err(Error::Unsupported(format!(
                    "limiter `{}` has no rate limit, and a weight (n = {n}) counts against rate limits only; call acquire() for a concurrency slot",
                    self.shared.name
                )))
            }
        };
        if n == 0 || n > capacity {
            return Err(Error::InsufficientCapacity {
                limiter: self.shared.name.to_string(),
                requested: n,
                capacity,
            });
        }
        Ok(())
    }

    async fn run(&self, deadline: Deadline, n: u32) -> Result<Permit> {
        self.check_cost(n)?;
        match self.obtain(Wait::Until(deadline), n).await? {
            Ok(permit) => Ok(permit),
            Err(refusal) => {
                self.shared.metrics.record_timeout();
                Err(self.timeout_error(deadline.asked.unwrap_or(Duration::MAX), refusal))
            }
        }
    }

    pub(crate) fn timeout_error(&self, timeout: Duration, refusal: Refusal) -> Error {
        Error::Timeout {
            limiter: self.shared.name.to_string(),
            timeout,
            retry_after: refusal.retry_after,
            reason: refusal.by.as_str(),
        }
    }

    /// The whole decision (see the module docs).
    async fn obtain(&self, wait: Wait, cost: u32) -> Result<Result<Permit, Refusal>> {
        let start = Instant::now();
        let spec = &self.shared.spec;
        let lease = match &spec.concurrency {
            None => None,
            Some(c) => match self.take_slot(c, wait).await? {
                Ok(lease) => lease,
                Err(refusal) => return Ok(Err(refusal)),
            },
        };
        let mut slot = None;
        let mut overshoot = Duration::ZERO;
        let mut slept = false;
        // Answered by the engine in this process, without awaiting it.
        let mut decided_here = false;
        if let Some(rate) = &spec.rate {
            let engine = &self.shared.engine;
            let horizon = engine.reservation_horizon(rate);
            let answer = loop {
                let remaining = wait.remaining().unwrap_or(Duration::MAX);
                let max_wait = horizon.map_or(remaining, |h| remaining.min(h));
                let answer = match engine.reserve_n_now(self.ctx(), rate, cost, max_wait) {
                    Some(answer) => {
                        decided_here = true;
                        Ok(answer)
                    }
                    None => self.reserve(rate, cost, max_wait).await,
                };
                match (answer, horizon) {
                    // Refused by the store's horizon, not by the caller's
                    // bound: sleep until the slot comes within it, unreserved.
                    (Ok(Reservation::Denied { retry_after }), Some(h))
                        if retry_after <= remaining && retry_after > h =>
                    {
                        tokio::time::sleep((retry_after - h).max(Duration::from_millis(1))).await;
                        slept = true;
                    }
                    (answer, _) => break answer,
                }
            };
            match answer {
                Ok(Reservation::Granted { wait, slot_unix_us }) => {
                    slot = slot_unix_us;
                    if !wait.is_zero() {
                        // `lease` is held across the sleep; dropping this
                        // future drops it and frees the slot.
                        let due = Instant::now() + wait;
                        tokio::time::sleep_until(due).await;
                        slept = true;
                        overshoot = Instant::now().saturating_duration_since(due);
                    }
                }
                Ok(Reservation::Denied { retry_after }) => {
                    give_back(lease).await;
                    return Ok(Err(Refusal {
                        retry_after: Some(retry_after),
                        by: Exhausted::of(rate),
                    }));
                }
                Err(e) => {
                    if let Err(denied) = self.backend_failure(e, "reserve") {
                        give_back(lease).await;
                        return Err(denied);
                    }
                }
            }
        }
        // Decided in this process, with no wait for a slot or a sleep:
        // nothing measurable passed since `start`.
        let instant = decided_here && !slept && spec.concurrency.is_none();
        let mut permit = if instant {
            self.grant_at(lease, Duration::ZERO, start)
        } else {
            self.grant_since(lease, start)
        };
        permit.slot_unix_us = slot;
        permit.overshoot = overshoot;
        Ok(Ok(permit))
    }

    /// A permit for a request that `waited`, holding `lease`; counted.
    pub(crate) fn grant(&self, lease: Option<LeaseGuard>, waited: Duration) -> Permit {
        self.grant_at(lease, waited, Instant::now())
    }

    /// [`grant`](Self::grant) for a request that began at `start`, with one
    /// clock reading for both the wait and the grant's time (the clock is a
    /// measurable share of an in-process decision).
    fn grant_since(&self, lease: Option<LeaseGuard>, start: Instant) -> Permit {
        let now = Instant::now();
        self.grant_at(lease, now.saturating_duration_since(start), now)
    }

    fn grant_at(&self, lease: Option<LeaseGuard>, waited: Duration, now: Instant) -> Permit {
        self.shared
            .metrics
            .record_acquisition_at(waited, now.into_std());
        Permit::new(self.shared.name, lease, waited)
    }
}
