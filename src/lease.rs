//! The concurrency-lease math, pure and clock-free, shared by every engine that computes in Rust.
//!
//! A concurrency limiter's state is the set of current holders, each with the
//! time its lease expires. Expired leases are dropped before every decision,
//! so a holder that vanished (a process killed with `kill -9`) loses its slot
//! once its lease runs out (DESIGN.md §3.6).

/// One holder of a concurrency slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Unique holder id (see [`crate::engine::HolderId`]).
    pub holder: String,
    /// When the lease runs out, on the engine's clock in nanoseconds.
    pub expires_at: u64,
}

/// The outcome of asking for a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acquire {
    /// The holder has a slot (newly, or it already had one and it was renewed).
    Acquired {
        /// Holders after this one joined.
        holders: u32,
    },
    /// Every slot is taken.
    Full {
        /// Nanoseconds until the earliest lease runs out, if nobody releases before.
        retry_after_ns: u64,
    },
}

/// Drops leases that ran out at or before `now`. Returns how many were dropped.
pub fn expire(leases: &mut Vec<Lease>, now: u64) -> usize {
    let before = leases.len();
    leases.retain(|l| l.expires_at > now);
    before - leases.len()
}

/// Takes (or renews) a slot for `holder` until `now + ttl_ns`, capped at `max` holders.
pub fn acquire(leases: &mut Vec<Lease>, holder: &str, now: u64, ttl_ns: u64, max: u32) -> Acquire {
    expire(leases, now);
    let expires_at = now.saturating_add(ttl_ns);
    if let Some(l) = leases.iter_mut().find(|l| l.holder == holder) {
        l.expires_at = expires_at;
        return Acquire::Acquired {
            holders: leases.len() as u32,
        };
    }
    if leases.len() >= max as usize {
        let earliest = leases.iter().map(|l| l.expires_at).min().unwrap_or(now);
        return Acquire::Full {
            retry_after_ns: earliest.saturating_sub(now),
        };
    }
    leases.push(Lease {
        holder: holder.to_owned(),
        expires_at,
    });
    Acquire::Acquired {
        holders: leases.len() as u32,
    }
}

/// Extends `holder`'s lease to `now + ttl_ns`. False when the lease was lost
/// (it expired and may have been given to someone else).
pub fn renew(leases: &mut Vec<Lease>, holder: &str, now: u64, ttl_ns: u64) -> bool {
    expire(leases, now);
    match leases.iter_mut().find(|l| l.holder == holder) {
        Some(l) => {
            l.expires_at = now.saturating_add(ttl_ns);
            true
        }
        None => false,
    }
}

/// Frees `holder`'s slot. True when it held one.
pub fn release(leases: &mut Vec<Lease>, holder: &str) -> bool {
    let before = leases.len();
    leases.retain(|l| l.holder != holder);
    leases.len() != before
}

/// How long the key must be kept after `now`: past the last expiry it holds nothing.
pub fn idle_after_ns(leases: &[Lease], now: u64) -> u64 {
    leases
        .iter()
        .map(|l| l.expires_at.saturating_sub(now))
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_renews_releases_and_expires() {
        let mut l = Vec::new();
        assert_eq!(
            acquire(&mut l, "a", 0, 100, 2),
            Acquire::Acquired { holders: 1 }
        );
        assert_eq!(
            acquire(&mut l, "b", 10, 100, 2),
            Acquire::Acquired { holders: 2 }
        );
        assert_eq!(
            acquire(&mut l, "c", 20, 100, 2),
            Acquire::Full { retry_after_ns: 80 }
        );
        // Re-acquiring by a holder is a renewal, not a second slot.
        assert_eq!(
            acquire(&mut l, "a", 30, 100, 2),
            Acquire::Acquired { holders: 2 }
        );
        assert!(renew(&mut l, "b", 40, 100));
        assert!(release(&mut l, "a"));
        assert!(!release(&mut l, "a"));
        assert_eq!(
            acquire(&mut l, "c", 50, 100, 2),
            Acquire::Acquired { holders: 2 }
        );
        // Everyone vanished: at 200 both leases ran out.
        assert_eq!(idle_after_ns(&l, 50), 100);
        assert!(!renew(&mut l, "b", 200, 100));
        assert!(l.is_empty());
    }
}
