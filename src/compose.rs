//! Composition: one all-or-nothing decision across several limiters.

use crate::engine::{BatchReservation, Ctx};
use crate::error::{Error, Result};
use crate::limiter::{give_back, Exhausted, LeaseGuard, Limiter, Permit};
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

    if let Some(first) = with_rate.first() {
        if !first.shared().engine.atomic_batches() {
            return Err(Error::Unsupported(format!(
                "check_all needs a store that decides several keys atomically, but `{}` uses store `{}` ({} engine), which cannot; use a Redis, Postgres or memory store for these limiters, or call them one by one",
                first.name(),
                first.spec().store,
                first.shared().engine.kind()
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
        match l.try_slot(spec).await {
            Ok(lease) => leases.push(lease),
            Err(denied) => {
                if denied.is_none() {
                    l.shared().metrics.record_timeout();
                }
                give_back_all(leases).await;
                return denied.map_or(Ok(None), Err);
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
                        reason = l.spec().rate.as_ref().map(|r| Exhausted::of(r).as_str()),
                        "check_all refused"
                    );
                }
                give_back_all(leases).await;
                return Ok(None);
            }
            Err(e) => {
                // One store decided for all: each limiter applies its own mode,
                // and any that fails closed denies the whole decision.
                for l in &with_rate {
                    if let Err(denied) = l.backend_failure(e.clone(), "reserve_all") {
                        give_back_all(leases).await;
                        return Err(denied);
                    }
                }
            }
        }
    }

    let permits = limiters
        .iter()
        .zip(leases)
        .map(|(l, lease)| l.grant(lease, Duration::ZERO))
        .collect();
    Ok(Some(permits))
}

/// Frees the slots taken for a decision that was then refused, before answering.
async fn give_back_all(leases: Vec<Option<LeaseGuard>>) {
    for lease in leases {
        give_back(lease).await;
    }
}
