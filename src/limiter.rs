//! Limiters and permits: waiting, timeouts, failure modes and metrics recording, once for every engine.
//!
//! A [`Limiter`] asks its engine for decisions and does everything around
//! them: it sleeps until a reserved rate slot begins (docs/design.md, Promises: 4), waits
//! for a released concurrency slot, bounds all of it by a timeout, applies
//! the limiter's failure mode when the store fails, and records metrics.

use crate::engine::{
    ConcurrencyState, Ctx, Engine, HolderId, LeaseOutcome, RateState, ReleaseSignal, Reservation,
};
use crate::error::{BackendError, Error, Result};
use crate::key::StateKey;
use crate::metrics::{Metrics, MetricsSnapshot};
use crate::quota::{ConcurrencySpec, FailureMode, LimiterSpec, RateSpec};
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The longest a concurrency waiter sleeps before asking again, should a
/// release signal be lost (a dropped pub/sub connection, say).
const RELEASE_POLL: Duration = Duration::from_millis(500);

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
    pub(crate) name: Arc<str>,
    pub(crate) spec: LimiterSpec,
    pub(crate) engine: Arc<dyn Engine>,
    pub(crate) metrics: Arc<Metrics>,
    /// First-come, first-served order of this process's concurrency waiters.
    pub(crate) queues: crate::queue::WaitQueues,
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

/// How long a request may wait.
#[derive(Debug, Clone, Copy)]
enum Wait {
    /// Not at all (`try_acquire`).
    No,
    /// Until the deadline (`None`: forever); `bound` is what the caller asked, for messages.
    Until {
        deadline: Option<Instant>,
        bound: Option<Duration>,
    },
}

impl Wait {
    /// Time left now; `None` means unbounded. Reads the clock only for a deadline.
    fn remaining(self) -> Option<Duration> {
        match self {
            Wait::No => Some(Duration::ZERO),
            Wait::Until { deadline, .. } => {
                deadline.map(|d| d.saturating_duration_since(Instant::now()))
            }
        }
    }
}

/// Why a request got no permit, before it becomes `None` or `Error::Timeout`.
pub(crate) struct Refusal {
    pub(crate) retry_after: Option<Duration>,
    pub(crate) reason: &'static str,
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
                name: name.into(),
                spec,
                engine,
                metrics,
                queues: Default::default(),
            }),
        }
    }

    /// The limiter's name.
    pub fn name(&self) -> &str {
        &self.shared.name
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

    /// Waits for a permit, bounded by the limiter's configured `timeout`
    /// (forever when it has none).
    ///
    /// A rate slot is reserved at once and the call sleeps until it begins;
    /// if the earliest slot lies beyond the timeout, nothing is reserved and
    /// the call fails at once with [`Error::Timeout`]. Dropping the future
    /// while it waits leaves no concurrency slot held (a rate slot already
    /// reserved stays spent: that errs towards admitting less).
    pub async fn acquire(&self) -> Result<Permit> {
        match self.shared.spec.timeout {
            Some(t) => self.acquire_timeout(t).await,
            None => {
                self.run(Wait::Until {
                    deadline: None,
                    bound: None,
                })
                .await
            }
        }
    }

    /// Like [`acquire`](Self::acquire), bounded by `timeout` instead of the configured one.
    pub async fn acquire_timeout(&self, timeout: Duration) -> Result<Permit> {
        let deadline = Instant::now().checked_add(timeout);
        self.run(Wait::Until {
            deadline,
            bound: Some(timeout),
        })
        .await
    }

    /// A permit if one is free right now, without waiting; `None` otherwise.
    pub async fn try_acquire(&self) -> Result<Option<Permit>> {
        match self.obtain(Wait::No).await? {
            Ok(permit) => Ok(Some(permit)),
            Err(_) => {
                self.shared.metrics.record_timeout();
                Ok(None)
            }
        }
    }

    async fn run(&self, wait: Wait) -> Result<Permit> {
        match self.obtain(wait).await? {
            Ok(permit) => Ok(permit),
            Err(refusal) => {
                self.shared.metrics.record_timeout();
                let Wait::Until { bound, .. } = wait else {
                    unreachable!("run() is only called with a deadline")
                };
                Err(self.timeout_error(bound.unwrap_or(Duration::MAX), refusal))
            }
        }
    }

    pub(crate) fn timeout_error(&self, timeout: Duration, refusal: Refusal) -> Error {
        Error::Timeout {
            limiter: self.shared.name.to_string(),
            timeout,
            retry_after: refusal.retry_after,
            reason: refusal.reason,
        }
    }

    /// The whole decision: a concurrency slot first (so no rate token is spent
    /// while queueing for a slot), then a rate slot, then the sleep until it.
    async fn obtain(&self, wait: Wait) -> Result<Result<Permit, Refusal>> {
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
        if let Some(rate) = &spec.rate {
            let horizon = self.shared.engine.reservation_horizon(rate);
            let answer = loop {
                let remaining = wait.remaining().unwrap_or(Duration::MAX);
                let max_wait = horizon.map_or(remaining, |h| remaining.min(h));
                let answer = self.shared.engine.reserve(self.ctx(), rate, max_wait).await;
                match (answer, horizon) {
                    // Refused by the store's horizon, not by the caller's
                    // bound: sleep until the slot comes within it, unreserved.
                    (Ok(Reservation::Denied { retry_after }), Some(h))
                        if retry_after <= remaining && retry_after > h =>
                    {
                        tokio::time::sleep((retry_after - h).max(Duration::from_millis(1))).await;
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
                        overshoot = Instant::now().saturating_duration_since(due);
                    }
                }
                Ok(Reservation::Denied { retry_after }) => {
                    give_back(lease).await;
                    return Ok(Err(Refusal {
                        retry_after: Some(retry_after),
                        reason: rate_reason(rate),
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
        let now = Instant::now();
        let waited = now.saturating_duration_since(start);
        self.shared
            .metrics
            .record_acquisition_at(waited, now.into_std());
        let mut permit = Permit::new(self.shared.name.clone(), lease, waited);
        permit.slot_unix_us = slot;
        permit.overshoot = overshoot;
        Ok(Ok(permit))
    }

    /// Takes a concurrency slot, waiting for a release within `wait`.
    /// `Ok(None)` is a grant without a slot (the store failed and the limiter fails open).
    async fn take_slot(
        &self,
        spec: &ConcurrencySpec,
        wait: Wait,
    ) -> Result<Result<Option<LeaseGuard>, Refusal>> {
        let holder = HolderId::new();
        let mut signal: Option<ReleaseSignal> = None;
        let mut signal_failed = false;
        let mut counted_cap = false;
        let gate = self.shared.queues.gate(self.key.encoded());
        // Held while this request waits at the head of the process's queue.
        let mut turn: Option<tokio::sync::OwnedSemaphorePermit> = None;
        loop {
            if turn.is_none() && gate.available_permits() == 0 {
                // Others in this process wait for this key already: queue
                // behind them rather than overtake them at the store.
                if !counted_cap {
                    self.shared.metrics.record_cap_reached();
                    counted_cap = true;
                }
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
                    Some(p) => turn = Some(p),
                    None => {
                        return Ok(Err(Refusal {
                            retry_after: None,
                            reason: "concurrency",
                        }))
                    }
                }
            }
            let asked = Instant::now();
            match self.request_lease(&holder, spec).await {
                Ok(LeaseOutcome::Acquired { .. }) => {
                    return Ok(Ok(Some(LeaseGuard::new(
                        self.clone(),
                        holder.clone(),
                        spec.lease,
                        asked,
                    ))))
                }
                Ok(LeaseOutcome::Full { retry_after }) => {
                    if !counted_cap {
                        self.shared.metrics.record_cap_reached();
                        counted_cap = true;
                    }
                    let remaining = wait.remaining();
                    if remaining == Some(Duration::ZERO) {
                        return Ok(Err(Refusal {
                            retry_after: Some(retry_after),
                            reason: "concurrency",
                        }));
                    }
                    if turn.is_none() {
                        // Become the head waiter, or queue behind the one there is.
                        match gate.clone().try_acquire_owned() {
                            Ok(p) => turn = Some(p),
                            Err(_) => continue,
                        }
                    }
                    if signal.is_none() && !signal_failed {
                        match self.shared.engine.subscribe_releases(self.ctx()).await {
                            // Subscribed: ask again at once, a release may have
                            // come between the answer and the subscription.
                            Ok(s) => {
                                signal = Some(s);
                                continue;
                            }
                            Err(e) => {
                                signal_failed = true;
                                tracing::warn!(limiter = %self.shared.name, error = %e,
                                    "cannot subscribe to slot releases; polling instead");
                            }
                        }
                    }
                    let mut nap = RELEASE_POLL.min(retry_after.max(Duration::from_millis(1)));
                    if let Some(r) = remaining {
                        nap = nap.min(r);
                    }
                    match signal.as_mut() {
                        Some(s) => {
                            let _ = tokio::time::timeout(nap, s.released()).await;
                        }
                        None => tokio::time::sleep(nap).await,
                    }
                }
                Err(e) => {
                    // The slot may have been taken before the failure (a reply lost
                    // to a timeout, say): free it, whatever the failure mode does.
                    release_after_failure(self, holder.clone());
                    self.backend_failure(e, "acquire_lease")?;
                    return Ok(Ok(None));
                }
            }
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
                Err(Error::Backend {
                    limiter: s.name.to_string(),
                    store: s.spec.store.clone(),
                    source: e,
                })
            }
        }
    }

    /// Reads this limiter's state (remaining tokens or window count, holders,
    /// reset time) without consuming anything. For a per-key limiter, call it
    /// on `limiter.key(k)`.
    pub async fn state(&self) -> Result<LimiterState> {
        let s = &self.shared;
        let wrap = |e: BackendError| {
            s.metrics.record_backend_error();
            Error::Backend {
                limiter: s.name.to_string(),
                store: s.spec.store.clone(),
                source: e,
            }
        };
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

pub(crate) fn rate_reason(rate: &RateSpec) -> &'static str {
    match rate {
        RateSpec::TokenBucket(_) => "rate",
        RateSpec::SlidingWindow(_) => "window",
    }
}

/// Permission to proceed. Holds a concurrency slot (if the limiter has a
/// cap) until dropped or [`release`](Self::release)d.
#[must_use = "dropping a permit at once frees its concurrency slot at once"]
pub struct Permit {
    limiter: Arc<str>,
    lease: Option<LeaseGuard>,
    waited: Duration,
    slot_unix_us: Option<u64>,
    overshoot: Duration,
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("limiter", &self.limiter)
            .field("holds_slot", &self.holds_slot())
            .field("waited", &self.waited)
            .finish()
    }
}

impl Permit {
    pub(crate) fn new(limiter: Arc<str>, mut lease: Option<LeaseGuard>, waited: Duration) -> Self {
        if let Some(l) = lease.as_mut() {
            l.granted = true;
        }
        Self {
            limiter,
            lease,
            waited,
            slot_unix_us: None,
            overshoot: Duration::ZERO,
        }
    }

    /// The limiter that granted it.
    pub fn limiter(&self) -> &str {
        &self.limiter
    }

    /// How long the acquire waited.
    pub fn waited(&self) -> Duration {
        self.waited
    }

    /// When the permit's rate slot began on the backend's wall clock
    /// (microseconds since the Unix epoch), where the backend reports it.
    pub fn slot_unix_us(&self) -> Option<u64> {
        self.slot_unix_us
    }

    /// How long after its reserved slot the acquire returned: the timer's
    /// lateness, counted from when the reservation arrived plus the wait it
    /// carried (zero when no wait was needed). `ratesync bench` reports its
    /// distribution as the wait overshoot.
    pub fn overshoot(&self) -> Duration {
        self.overshoot
    }

    /// True when the permit holds a concurrency slot.
    pub fn holds_slot(&self) -> bool {
        self.lease.is_some()
    }

    /// False once the permit's concurrency lease was lost: a renewal found
    /// the slot gone, or the store could not be reached to renew it before
    /// the lease ran out. Another holder may have the slot then, and the
    /// work the permit guards should stop. True for a permit without a slot
    /// (there is nothing to lose).
    pub fn is_held(&self) -> bool {
        self.lease.as_ref().is_none_or(|l| !*l.lost.borrow())
    }

    /// Resolves when the permit's concurrency lease is lost (see
    /// [`is_held`](Self::is_held)); never, for a permit without a slot. Race
    /// it against the guarded work:
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> ratesync::Result<()> {
    /// # let registry = ratesync::Registry::from_toml_str("[limiters.jobs]\nmax_concurrent = 1").await?;
    /// let permit = registry.limiter("jobs")?.acquire().await?;
    /// tokio::select! {
    ///     _ = permit.lost() => eprintln!("lease lost: stopping, another worker may hold the slot"),
    ///     _ = async { /* the guarded work */ } => {}
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn lost(&self) {
        match &self.lease {
            Some(l) => {
                let mut rx = l.lost.clone();
                // An error means the renewer ended without a loss (aborted):
                // the permit is going away, so nothing more will be lost.
                if rx.wait_for(|lost| *lost).await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending().await,
        }
    }

    /// Frees the concurrency slot now and waits until the store confirmed it.
    /// Dropping the permit does the same in the background.
    pub async fn release(mut self) -> Result<()> {
        match self.lease.take() {
            Some(lease) => lease.release().await,
            None => Ok(()),
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

/// Frees a slot taken for a request that was then refused, before answering:
/// a caller that exits right after the refusal must not leave it held.
pub(crate) async fn give_back(lease: Option<LeaseGuard>) {
    if let Some(lease) = lease {
        if let Err(e) = lease.release().await {
            tracing::warn!(error = %e, "could not give back a concurrency slot; it frees itself when its lease runs out");
        }
    }
}

/// Releases running in the background (permits dropped rather than released),
/// counted so that a program can wait for them before it exits: a runtime
/// that shuts down drops them, and their slots stay held until the lease ends.
struct BackgroundReleases {
    running: AtomicUsize,
    finished: tokio::sync::Notify,
}

static BACKGROUND: BackgroundReleases = BackgroundReleases {
    running: AtomicUsize::new(0),
    finished: tokio::sync::Notify::const_new(),
};

/// Counts one background release for as long as it lives, cancelled or not.
struct Running;

impl Running {
    fn start() -> Self {
        BACKGROUND.running.fetch_add(1, Ordering::SeqCst);
        Running
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if BACKGROUND.running.fetch_sub(1, Ordering::SeqCst) == 1 {
            BACKGROUND.finished.notify_waiters();
        }
    }
}

/// Waits until the slots of dropped permits have been given back to their
/// stores, at most `timeout`; true when none is left pending.
///
/// Dropping a [`Permit`] (or an `acquire` future) frees its slot on a
/// background task. Call this (or [`Registry::close`](crate::Registry::close))
/// before the runtime shuts down, or those slots stay held until their lease
/// runs out.
pub async fn wait_for_releases(timeout: Duration) -> bool {
    let wait = async {
        loop {
            let finished = BACKGROUND.finished.notified();
            if BACKGROUND.running.load(Ordering::SeqCst) == 0 {
                return;
            }
            finished.await;
        }
    };
    tokio::time::timeout(timeout, wait).await.is_ok()
}

/// Frees `holder`'s slot without awaiting: at once where the engine can,
/// else on a spawned task. Without a runtime the lease simply runs out.
pub(crate) fn release_in_background(limiter: &Limiter, holder: HolderId) {
    release_detached(limiter, holder, true);
}

/// Frees a slot that a failed request *may* have taken. The store already
/// failed once for this request (and that was counted), so a failure here
/// is only logged.
pub(crate) fn release_after_failure(limiter: &Limiter, holder: HolderId) {
    release_detached(limiter, holder, false);
}

fn release_detached(limiter: &Limiter, holder: HolderId, count_failure: bool) {
    if limiter
        .shared
        .engine
        .release_lease_now(limiter.ctx(), &holder)
        .is_some()
    {
        return;
    }
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => {
            let limiter = limiter.clone();
            let running = Running::start();
            handle.spawn(async move {
                let _running = running;
                if let Err(e) = limiter.shared.engine.release_lease(limiter.ctx(), &holder).await {
                    if count_failure {
                        limiter.shared.metrics.record_backend_error();
                        tracing::warn!(limiter = %limiter.shared.name, error = %e,
                            "could not release a concurrency slot; it frees itself when its lease runs out");
                    } else {
                        tracing::debug!(limiter = %limiter.shared.name, error = %e,
                            "could not release a slot a failed request may have taken; it frees itself when its lease runs out");
                    }
                }
            });
        }
        Err(_) => tracing::warn!(limiter = %limiter.shared.name,
            "permit dropped outside a tokio runtime; its slot frees itself when its lease runs out"),
    }
}

/// A held concurrency slot: renewed in the background while it lives, freed on drop.
pub(crate) struct LeaseGuard {
    limiter: Limiter,
    holder: HolderId,
    renewer: Option<JoinHandle<()>>,
    /// Becomes true, once and for good, when the lease is lost.
    lost: tokio::sync::watch::Receiver<bool>,
    done: bool,
    // Only a slot that became a permit counts in `total_releases`; one given
    // back because the rate refused was never granted.
    granted: bool,
}

impl LeaseGuard {
    /// A slot taken by a request sent at `asked`: the store's lease began
    /// no earlier, so it certainly runs until `asked + lease`.
    pub(crate) fn new(limiter: Limiter, holder: HolderId, lease: Duration, asked: Instant) -> Self {
        limiter.shared.metrics.slot_taken();
        let (lost_tx, lost) = tokio::sync::watch::channel(false);
        let renewer = tokio::runtime::Handle::try_current().ok().map(|h| {
            let limiter = limiter.clone();
            let holder = holder.clone();
            h.spawn(renew_until_lost(limiter, holder, lease, asked, lost_tx))
        });
        Self {
            limiter,
            holder,
            renewer,
            lost,
            done: false,
            granted: false,
        }
    }

    fn finish(&mut self) {
        self.done = true;
        if let Some(r) = self.renewer.take() {
            r.abort();
        }
        self.limiter.shared.metrics.slot_released(self.granted);
    }

    async fn release(mut self) -> Result<()> {
        self.finish();
        let l = &self.limiter;
        match l.shared.engine.release_lease(l.ctx(), &self.holder).await {
            Ok(_) => Ok(()),
            Err(e) => {
                l.shared.metrics.record_backend_error();
                Err(Error::Backend {
                    limiter: l.shared.name.to_string(),
                    store: l.shared.spec.store.clone(),
                    source: e,
                })
            }
        }
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        if !self.done {
            self.finish();
            release_in_background(&self.limiter, self.holder.clone());
        }
    }
}

/// Renews a lease every third of its length until the task is aborted (the
/// permit went away) or the lease is lost: a renewal found it gone, or no
/// renewal succeeded before the last certain expiry (the store may have
/// given the slot to someone else meanwhile). A loss is counted in
/// `leases_lost`, logged, and told to the permit ([`Permit::lost`]).
async fn renew_until_lost(
    limiter: Limiter,
    holder: HolderId,
    lease: Duration,
    asked: Instant,
    lost: tokio::sync::watch::Sender<bool>,
) {
    let every = (lease / 3).max(Duration::from_millis(10));
    // The lease surely runs until here: it began no earlier than the request.
    let mut held_until = asked + lease;
    let why = loop {
        tokio::time::sleep(every).await;
        let sent = Instant::now();
        let renewal = limiter
            .shared
            .engine
            .renew_lease(limiter.ctx(), &holder, lease);
        match tokio::time::timeout_at(held_until, renewal).await {
            Ok(Ok(true)) => held_until = sent + lease,
            Ok(Ok(false)) => break "the store no longer holds it",
            Ok(Err(e)) => {
                limiter.shared.metrics.record_backend_error();
                tracing::warn!(limiter = %limiter.shared.name, error = %e, "could not renew a concurrency lease");
                if Instant::now() >= held_until {
                    break "renewals failed until the lease ran out";
                }
            }
            Err(_) => break "no renewal was answered before the lease ran out",
        }
    };
    limiter.shared.metrics.record_lease_lost();
    tracing::warn!(limiter = %limiter.shared.name, holder = %holder, reason = why,
        "concurrency lease lost while its permit is alive: another holder may have the slot; stop the work the permit guards (Permit::lost)");
    let _ = lost.send(true);
}
