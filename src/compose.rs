//! Composition: one all-or-nothing decision across several limiters.

use crate::engine::{BatchReservation, Ctx, HolderId, LeaseOutcome};
use crate::error::{Error, Result};
use crate::limiter::{rate_reason, Limiter, PendingLease, Permit};
use std::sync::Arc;
use std::time::Duration;

/// Takes a permit from every limiter, or from none: one decision for, say, a
/// per-IP and a per-user limit. Never waits. Returns `None` when any limiter
/// refuses; the refusing one counts a timeout, the others are untouched.
///
/// The rate limits are decided atomically by their engine, so all limiters
/// with a rate must share one store. Concurrency slots are taken first and
/// given back if anything refuses afterwards.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> ratesync::Result<()> {
/// let reg = ratesync::Registry::from_toml_str(r#"
///     [limiters.per_ip]
///     rate_per_second = 10.0
///     burst = 5
///     [limiters.per_user]
///     rate_per_second = 1.0
/// "#).await?;
/// let ip = reg.limiter("per_ip")?.key("203.0.113.9");
/// let user = reg.limiter("per_user")?.key("42");
/// assert!(ratesync::check_all(&[&ip, &user]).await?.is_some());
/// // The user's single token is spent: nothing is taken from the IP either.
/// assert!(ratesync::check_all(&[&ip, &user]).await?.is_none());
/// assert_eq!(ip.state().await?.rate.map(|r| matches!(r,
///     ratesync::engine::RateState::TokenBucket { remaining: 4, .. })), Some(true));
/// # Ok(()) }
/// ```
pub async fn check_all(limiters: &[&Limiter]) -> Result<Option<Vec<Permit>>> {
    let with_rate: Vec<&Limiter> = limiters
        .iter()
        .copied()
        .filter(|l| l.spec().rate.is_some())
        .collect();
    if let Some(first) = with_rate.first() {
        if let Some(other) = with_rate
            .iter()
            .find(|l| !Arc::ptr_eq(&l.shared().engine, &first.shared().engine))
        {
            return Err(Error::Unsupported(format!(
                "check_all decides rate limits atomically in one store, but `{}` uses store `{}` and `{}` uses store `{}`; put them in one store or call them one by one",
                first.name(),
                first.spec().store,
                other.name(),
                other.spec().store
            )));
        }
    }

    for (i, a) in limiters.iter().enumerate() {
        if limiters[..i].iter().any(|b| b.state_key() == a.state_key()) {
            return Err(Error::Unsupported(format!(
                "check_all got limiter `{}` twice for the same key; pass each limiter once",
                a.name()
            )));
        }
    }

    // Concurrency slots first: each can be given back exactly if a later step refuses.
    let mut leases = Vec::with_capacity(limiters.len());
    for l in limiters {
        let Some(spec) = &l.spec().concurrency else {
            leases.push(None);
            continue;
        };
        let holder = HolderId::new();
        let pending = PendingLease::arm(l, holder.clone());
        match l
            .shared()
            .engine
            .acquire_lease(l.ctx(), &holder, spec)
            .await
        {
            Ok(LeaseOutcome::Acquired { .. }) => leases.push(Some(pending.into_guard(spec.lease))),
            Ok(LeaseOutcome::Full { .. }) => {
                pending.disarm();
                l.shared().metrics.record_cap_reached();
                l.shared().metrics.record_timeout();
                return Ok(None);
            }
            Err(e) => {
                drop(pending);
                l.backend_failure(e, "acquire_lease")?;
                leases.push(None);
            }
        }
    }

    if let Some(first) = with_rate.first() {
        let items: Vec<(Ctx<'_>, _)> = with_rate
            .iter()
            .filter_map(|l| l.spec().rate.map(|r| (l.ctx(), r)))
            .collect();
        match first
            .shared()
            .engine
            .reserve_all(&items, Duration::ZERO)
            .await
        {
            Ok(BatchReservation::Granted { .. }) => {}
            Ok(BatchReservation::Denied { index, .. }) => {
                if let Some(l) = with_rate.get(index) {
                    l.shared().metrics.record_timeout();
                    tracing::trace!(
                        limiter = l.name(),
                        reason = l.spec().rate.as_ref().map(rate_reason),
                        "check_all refused"
                    );
                }
                return Ok(None);
            }
            Err(e) => {
                // One store decided for all: each limiter applies its own mode,
                // and any that fails closed denies the whole decision.
                for l in &with_rate {
                    l.backend_failure(e.clone(), "reserve_all")?;
                }
            }
        }
    }

    let permits = limiters
        .iter()
        .zip(leases)
        .map(|(l, lease)| {
            l.shared().metrics.record_acquisition(Duration::ZERO);
            Permit::new(l.shared().name.clone(), lease, Duration::ZERO)
        })
        .collect();
    Ok(Some(permits))
}
