//! What a grant hands out: the [`Permit`], and the concurrency lease it
//! holds, renewed in the background until it is released, dropped or lost.

use super::release::release_in_background;
use super::Limiter;
use crate::engine::HolderId;
use crate::error::Result;
use std::fmt;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Permission to proceed. Holds a concurrency slot (if the limiter has a
/// cap) until dropped or [`release`](Self::release)d.
#[must_use = "dropping a permit at once frees its concurrency slot at once"]
pub struct Permit {
    limiter: &'static str,
    /// Boxed: a lease is rare beside rate-only grants, and a permit moves
    /// through several futures' results (an inline guard made it ~170 bytes).
    lease: Option<Box<LeaseGuard>>,
    waited: Duration,
    pub(super) slot_unix_us: Option<u64>,
    pub(super) overshoot: Duration,
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
    pub(crate) fn new(limiter: &'static str, lease: Option<LeaseGuard>, waited: Duration) -> Self {
        Self {
            limiter,
            lease: lease.map(|mut l| {
                l.granted = true;
                Box::new(l)
            }),
            waited,
            slot_unix_us: None,
            overshoot: Duration::ZERO,
        }
    }

    /// The limiter that granted it.
    pub fn limiter(&self) -> &str {
        self.limiter
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

    pub(super) async fn release(mut self) -> Result<()> {
        self.finish();
        let l = &self.limiter;
        match l.shared.engine.release_lease(l.ctx(), &self.holder).await {
            Ok(_) => Ok(()),
            Err(e) => Err(l.store_failed(e)),
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

/// Frees a slot taken for a request that was then refused, before answering:
/// a caller that exits right after the refusal must not leave it held.
pub(crate) async fn give_back(lease: Option<LeaseGuard>) {
    if let Some(lease) = lease {
        if let Err(e) = lease.release().await {
            tracing::warn!(error = %e, "could not give back a concurrency slot; it frees itself when its lease runs out");
        }
    }
}
