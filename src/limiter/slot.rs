//! Taking a concurrency slot: one request to the store at a time, queued
//! first-come first-served behind this process's other waiters for the key,
//! woken by the store's release signal (or a poll, should it be lost).

use super::release::{release_after_failure, Running};
use super::wait::{Exhausted, Refusal, Wait};
use super::LeaseGuard;
use super::Limiter;
use crate::engine::{HolderId, LeaseOutcome, ReleaseSignal};
use crate::error::{BackendError, Error, Result};
use crate::quota::ConcurrencySpec;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The longest a concurrency waiter sleeps before asking again, should a
/// release signal be lost (a dropped pub/sub connection, say).
const RELEASE_POLL: Duration = Duration::from_millis(500);

/// The store's answer to one slot request.
pub(crate) enum SlotAnswer {
    /// The slot is held, renewed while the guard lives.
    Taken(LeaseGuard),
    /// Every slot is held; one may come free in `retry_after` (a lease's end).
    Full { retry_after: Duration },
    /// The store failed (the slot, if it was taken, is being freed).
    Failed(BackendError),
}

/// What a waiter for a slot keeps between its requests.
struct Waiting {
    /// The store's release signal, once subscribed.
    signal: Option<ReleaseSignal>,
    /// Subscribing failed: poll instead of asking again.
    signal_failed: bool,
    /// `cap_reached` is counted once per request, not once per retry.
    counted_cap: bool,
    /// Held while this request waits at the head of the process's queue.
    turn: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Limiter {
    /// One slot request for `holder`, its failure already made safe: a slot
    /// that a failed request may have taken is freed.
    pub(crate) async fn ask_for_slot_as(
        &self,
        holder: &HolderId,
        spec: &ConcurrencySpec,
    ) -> SlotAnswer {
        let asked = Instant::now();
        match self.request_lease(holder, spec).await {
            Ok(LeaseOutcome::Acquired { .. }) => SlotAnswer::Taken(LeaseGuard::new(
                self.clone(),
                holder.clone(),
                spec.lease,
                asked,
            )),
            Ok(LeaseOutcome::Full { retry_after }) => SlotAnswer::Full { retry_after },
            Err(e) => {
                // The slot may have been taken before the failure (a reply lost
                // to a timeout, say): free it, whatever the failure mode does.
                release_after_failure(self, holder.clone());
                SlotAnswer::Failed(e)
            }
        }
    }

    /// Takes a concurrency slot without waiting, for a decision over several
    /// limiters: `Some(lease)` (or `None` where a failed store admits), or
    /// `Err(None)` when the slots are full (counted as a cap reached), or
    /// `Err(Some(error))` when a store failure denies.
    pub(crate) async fn try_slot(
        &self,
        spec: &ConcurrencySpec,
    ) -> std::result::Result<Option<LeaseGuard>, Option<Error>> {
        match self.ask_for_slot(spec).await {
            SlotAnswer::Taken(lease) => Ok(Some(lease)),
            SlotAnswer::Full { .. } => {
                self.shared.metrics.record_cap_reached();
                Err(None)
            }
            SlotAnswer::Failed(e) => match self.backend_failure(e, "acquire_lease") {
                Ok(()) => Ok(None),
                Err(denied) => Err(Some(denied)),
            },
        }
    }

    /// One slot request for a new holder.
    pub(crate) async fn ask_for_slot(&self, spec: &ConcurrencySpec) -> SlotAnswer {
        self.ask_for_slot_as(&HolderId::new(), spec).await
    }

    fn count_cap_once(&self, waiting: &mut Waiting) {
        if !waiting.counted_cap {
            self.shared.metrics.record_cap_reached();
            waiting.counted_cap = true;
        }
    }

    /// Takes a concurrency slot, waiting for a release within `wait`.
    /// `Ok(None)` is a grant without a slot (the store failed and the limiter fails open).
    pub(crate) async fn take_slot(
        &self,
        spec: &ConcurrencySpec,
        wait: Wait,
    ) -> Result<Result<Option<LeaseGuard>, Refusal>> {
        let holder = HolderId::new();
        let mut waiting = Waiting {
            signal: None,
            signal_failed: false,
            counted_cap: false,
            turn: None,
        };
        let refused = |retry_after| Refusal {
            retry_after,
            by: Exhausted::Concurrency,
        };
        let gate = self.shared.queues.gate(self.key.encoded());
        loop {
            if waiting.turn.is_none() && gate.available_permits() == 0 {
                // Others in this process wait for this key already: queue
                // behind them rather than overtake them at the store.
                self.count_cap_once(&mut waiting);
                let queued = gate.clone().acquire_owned();
                let got = match wait.remaining() {
                    None => queued.await.ok(),
                    Some(r) if r.is_zero() => None,
                    Some(r) => tokio::time::timeout(r, queued)
                        .await
                        .ok()
                        .and_then(|p| p.ok()),
                };
                match got {
                    Some(p) => waiting.turn = Some(p),
                    None => return Ok(Err(refused(None))),
                }
            }
            match self.ask_for_slot_as(&holder, spec).await {
                SlotAnswer::Taken(lease) => return Ok(Ok(Some(lease))),
                SlotAnswer::Failed(e) => {
                    self.backend_failure(e, "acquire_lease")?;
                    return Ok(Ok(None));
                }
                SlotAnswer::Full { retry_after } => {
                    self.count_cap_once(&mut waiting);
                    let remaining = wait.remaining();
                    if remaining == Some(Duration::ZERO) {
                        return Ok(Err(refused(Some(retry_after))));
                    }
                    if waiting.turn.is_none() {
                        // Become the head waiter, or queue behind the one there is.
                        match gate.clone().try_acquire_owned() {
                            Ok(p) => waiting.turn = Some(p),
                            Err(_) => continue,
                        }
                    }
                    if waiting.signal.is_none() && !waiting.signal_failed {
                        match self.shared.engine.subscribe_releases(self.ctx()).await {
                            // Subscribed: ask again at once, a release may have
                            // come between the answer and the subscription.
                            Ok(s) => {
                                waiting.signal = Some(s);
                                continue;
                            }
                            Err(e) => {
                                waiting.signal_failed = true;
                                tracing::warn!(limiter = %self.shared.name, error = %e,
                                    "cannot subscribe to slot releases; polling instead");
                            }
                        }
                    }
                    let mut nap = RELEASE_POLL.min(retry_after.max(Duration::from_millis(1)));
                    if let Some(r) = remaining {
                        nap = nap.min(r);
                    }
                    match waiting.signal.as_mut() {
                        Some(s) => {
                            let _ = tokio::time::timeout(nap, s.released()).await;
                        }
                        None => tokio::time::sleep(nap).await,
                    }
                }
            }
        }
    }
}

impl Limiter {
    /// Asks the engine for a slot on a task of its own. A caller that gives
    /// up mid-request (a dropped `acquire`) cannot cut the request off after
    /// it was sent: the backend may still grant it, and a release sent at
    /// once could overtake it and leave the slot held until its lease ends.
    /// Instead the request is left to finish, and a slot it took is released
    /// after it (counted for [`wait_for_releases`]).
    pub(crate) async fn request_lease(
        &self,
        holder: &HolderId,
        spec: &ConcurrencySpec,
    ) -> std::result::Result<LeaseOutcome, BackendError> {
        let (limiter, who, spec_owned) = (self.clone(), holder.clone(), *spec);
        let task = tokio::spawn(async move {
            limiter
                .shared
                .engine
                .acquire_lease(limiter.ctx(), &who, &spec_owned)
                .await
        });
        let mut in_flight = InFlight {
            task: Some(task),
            limiter: self.clone(),
            holder: holder.clone(),
        };
        let joined = match in_flight.task.as_mut() {
            Some(task) => task.await,
            None => unreachable!("set above"),
        };
        in_flight.task = None;
        joined.unwrap_or_else(|e| {
            Err(BackendError::new(
                self.shared.engine.kind(),
                format!("the slot request stopped: {e}"),
            ))
        })
    }
}

type LeaseRequest = JoinHandle<std::result::Result<LeaseOutcome, BackendError>>;

/// A slot request whose caller may still give up; see [`Limiter::request_lease`].
struct InFlight {
    task: Option<LeaseRequest>,
    limiter: Limiter,
    holder: HolderId,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let Some(task) = self.task.take() else { return };
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (limiter, holder) = (self.limiter.clone(), self.holder.clone());
        let running = Running::start();
        handle.spawn(async move {
            let _running = running;
            match task.await {
                Ok(Ok(LeaseOutcome::Full { .. })) => {}
                Ok(Ok(LeaseOutcome::Acquired { .. })) => {
                    if let Err(e) = limiter
                        .shared
                        .engine
                        .release_lease(limiter.ctx(), &holder)
                        .await
                    {
                        limiter.shared.metrics.record_backend_error();
                        tracing::warn!(limiter = %limiter.shared.name, error = %e,
                            "could not release an abandoned slot request; it frees itself when its lease runs out");
                    }
                }
                // Perhaps taken before the failure: give it back, quietly.
                _ => release_after_failure(&limiter, holder),
            }
        });
    }
}
