//! The concurrency-lease math, pure and clock-free, shared by every engine that computes in Rust.
//!
//! A concurrency limiter's state is the set of current holders, each with the
//! time its lease expires. Expired leases are dropped before every decision,
//! so a holder that vanished (a process killed with `kill -9`) loses its slot
//! once its lease runs out (docs/design.md, Leases).

/// How long a release of a holder that held nothing fences that holder out:
/// an `acquire` for it that reaches the store later (a request its caller
/// abandoned at `response_timeout`, still on its way) is refused instead of
/// taking a slot nobody will release. 60 s outlasts any request a store
/// still answers; one that arrives later takes a slot that its lease frees.
pub const FENCE_NS: u64 = 60_000_000_000;

/// Fences are kept beside the leases, as entries whose holder starts with
/// this character (a [`HolderId`](crate::engine::HolderId) never does), so
/// every store of leases keeps them with no layout of its own.
const FENCE_MARK: char = '!';

/// True for the entry of a fence rather than a holder.
pub fn is_fence(l: &Lease) -> bool {
    l.holder.starts_with(FENCE_MARK)
}

/// The holders among `leases` (fences left out).
pub fn holders(leases: &[Lease]) -> impl Iterator<Item = &Lease> {
    leases.iter().filter(|l| !is_fence(l))
}

fn fenced(leases: &[Lease], holder: &str) -> bool {
    leases
        .iter()
        .any(|l| is_fence(l) && &l.holder[FENCE_MARK.len_utf8()..] == holder)
}

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
/// A holder fenced by an earlier [`release`] is refused.
pub fn acquire(leases: &mut Vec<Lease>, holder: &str, now: u64, ttl_ns: u64, max: u32) -> Acquire {
    expire(leases, now);
    let expires_at = now.saturating_add(ttl_ns);
    if let Some(l) = leases.iter_mut().find(|l| l.holder == holder) {
        l.expires_at = expires_at;
        return Acquire::Acquired {
            holders: holders(leases).count() as u32,
        };
    }
    let held = holders(leases).count();
    if held >= max as usize || fenced(leases, holder) {
        let earliest = holders(leases).map(|l| l.expires_at).min().unwrap_or(now);
        return Acquire::Full {
            retry_after_ns: earliest.saturating_sub(now),
        };
    }
    leases.push(Lease {
        holder: holder.to_owned(),
        expires_at,
    });
    Acquire::Acquired {
        holders: held as u32 + 1,
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

/// Frees `holder`'s slot. True when it held one; when it held none, the
/// holder is fenced out for [`FENCE_NS`] (an acquire of it still on its way
/// must not take a slot after its release), and the state changed all the same.
pub fn release(leases: &mut Vec<Lease>, holder: &str, now: u64) -> bool {
    let before = leases.len();
    leases.retain(|l| l.holder != holder);
    if leases.len() != before {
        return true;
    }
    expire(leases, now);
    if !fenced(leases, holder) {
        leases.push(Lease {
            holder: format!("{FENCE_MARK}{holder}"),
            expires_at: now.saturating_add(FENCE_NS),
        });
    }
    false
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
        assert!(release(&mut l, "a", 40));
        assert!(!release(&mut l, "a", 40));
        assert_eq!(
            acquire(&mut l, "c", 50, 100, 2),
            Acquire::Acquired { holders: 2 }
        );
        // Everyone vanished: at 200 both leases ran out; the fence of "a"
        // (released twice) keeps the key until it ends.
        assert_eq!(idle_after_ns(&l, 50), 40 + FENCE_NS - 50);
        assert!(!renew(&mut l, "b", 200, 100));
        assert_eq!(holders(&l).count(), 0);
    }

    #[test]
    fn a_release_before_the_acquire_fences_the_holder() {
        let mut l = Vec::new();
        // The acquire was abandoned and its release arrived first.
        assert!(!release(&mut l, "late", 0));
        assert_eq!(
            acquire(&mut l, "late", 10, 100, 1),
            Acquire::Full { retry_after_ns: 0 }
        );
        // Others are not affected, and the fence takes no slot.
        assert_eq!(
            acquire(&mut l, "other", 10, 100, 1),
            Acquire::Acquired { holders: 1 }
        );
        // A second release of nothing adds no second fence.
        assert!(!release(&mut l, "late", 20));
        assert_eq!(l.iter().filter(|x| is_fence(x)).count(), 1);
        // The fence runs out after FENCE_NS.
        assert!(release(&mut l, "other", 30));
        assert_eq!(
            acquire(&mut l, "late", FENCE_NS + 1, 100, 1),
            Acquire::Acquired { holders: 1 }
        );
    }
}
