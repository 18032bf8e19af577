//! The exact sliding-window math, pure and clock-free, shared by every engine that computes in Rust.
//!
//! A window keeps the times of its most recent grants (at most `limit` of them:
//! older ones can no longer decide anything). A new grant at time `s` is
//! allowed when fewer than `limit` grants lie in `(s - window, s]`. Grants are
//! scheduled in non-decreasing order, so checking the window that *ends* at
//! each new grant is enough to bound every window (docs/design.md, Promises: 1): any window
//! is contained in the one ending at its latest grant.
//!
//! Waiting callers reserve a future grant time the same way the token bucket
//! does: the earliest `s` at which the window has room.

use std::collections::VecDeque;

/// The parameters of one exact sliding window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SlidingWindow {
    limit: u32,
    window_ns: u64,
}

/// The outcome of asking a window for one grant at time `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// A grant is reserved at `now + wait_ns`; call [`SlidingWindow::record`].
    Granted {
        /// How long after `now` the reserved grant lies.
        wait_ns: u64,
    },
    /// The earliest grant lies beyond the caller's bound; nothing was reserved.
    Denied {
        /// How long after `now` the earliest grant would lie.
        retry_after_ns: u64,
    },
}

/// What a window holds at a given moment, read without consuming anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowState {
    /// Grants in the window ending now.
    pub count: u32,
    /// Grants still possible at once.
    pub remaining: u32,
    /// Nanoseconds until the window is empty again.
    pub reset_after_ns: u64,
    /// Nanoseconds until one more grant is possible (zero when one is).
    pub retry_after_ns: u64,
}

impl SlidingWindow {
    /// At most `limit` grants in any window of `window_ns` nanoseconds.
    ///
    /// Returns `None` for a limit or window of zero.
    pub fn new(limit: u32, window_ns: u64) -> Option<Self> {
        (limit > 0 && window_ns > 0).then_some(Self { limit, window_ns })
    }

    /// The configured limit.
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// The window length in nanoseconds.
    pub fn window_ns(&self) -> u64 {
        self.window_ns
    }

    /// Drops the grants that can no longer count in a window ending at or after `now`.
    pub fn trim(&self, grants: &mut VecDeque<u64>, now: u64) {
        self.forget_before(grants, now);
        while grants.len() > self.limit as usize {
            grants.pop_front();
        }
    }

    /// Drops the grants that have left the window ending at `now`, and
    /// only those: what is left is right for a window of this length under
    /// any limit. (A policy's windows keep their logs so, since a reload
    /// may change the limit while a check under the old one is in flight;
    /// [`trim`](Self::trim) also drops all but the last `limit`, which a
    /// limiter's reservations ahead of now need to stay bounded.)
    pub fn forget_before(&self, grants: &mut VecDeque<u64>, now: u64) {
        let horizon = now.saturating_sub(self.window_ns);
        while grants
            .front()
            .is_some_and(|&g| g <= horizon && now >= self.window_ns)
        {
            grants.pop_front();
        }
    }

    /// The earliest time at or after `now` when `cost` grants fit at once.
    fn earliest(&self, grants: &VecDeque<u64>, now: u64, cost: u32) -> u64 {
        let last = grants.back().copied().unwrap_or(0);
        let mut at = now.max(last);
        let (len, limit, cost) = (grants.len(), self.limit as usize, cost.max(1) as usize);
        if len + cost > limit && cost <= limit {
            // The grant `limit - cost + 1` places back must have left the
            // window (s - window, s]: then `cost` more make `limit`.
            let must_leave = grants[len + cost - 1 - limit];
            at = at.max(must_leave.saturating_add(self.window_ns));
        }
        at
    }

    /// Asks for one grant at `now`, accepting one at most `max_wait_ns` away.
    /// `grants` must be in order (as [`record`](Self::record) keeps them).
    pub fn decide(&self, grants: &VecDeque<u64>, now: u64, max_wait_ns: u64) -> Decision {
        self.decide_n(grants, now, 1, max_wait_ns)
    }

    /// Asks for `cost` grants at once (a weighted request) at `now`,
    /// accepting a slot at most `max_wait_ns` away. A `cost` above the limit
    /// can never fit and is always denied.
    pub fn decide_n(
        &self,
        grants: &VecDeque<u64>,
        now: u64,
        cost: u32,
        max_wait_ns: u64,
    ) -> Decision {
        if cost > self.limit {
            return Decision::Denied {
                retry_after_ns: self.window_ns,
            };
        }
        let wait_ns = self.earliest(grants, now, cost) - now;
        if wait_ns > max_wait_ns {
            Decision::Denied {
                retry_after_ns: wait_ns,
            }
        } else {
            Decision::Granted { wait_ns }
        }
    }

    /// Stores a grant decided by [`decide`](Self::decide) and trims the rest.
    pub fn record(&self, grants: &mut VecDeque<u64>, now: u64, wait_ns: u64) {
        self.record_n(grants, now, 1, wait_ns);
    }

    /// Stores `cost` grants decided by [`decide_n`](Self::decide_n), all at
    /// the slot, and trims the rest.
    pub fn record_n(&self, grants: &mut VecDeque<u64>, now: u64, cost: u32, wait_ns: u64) {
        for _ in 0..cost.max(1) {
            grants.push_back(now + wait_ns);
        }
        self.trim(grants, now);
    }

    /// The window's contents at `now`.
    pub fn state(&self, grants: &VecDeque<u64>, now: u64) -> WindowState {
        let horizon = now.saturating_sub(self.window_ns);
        let count = grants
            .iter()
            .filter(|&&g| (g > horizon || now < self.window_ns) && g <= now)
            .count() as u32;
        let pending = grants.iter().filter(|&&g| g > now).count() as u32;
        let remaining = self.limit.saturating_sub(count + pending);
        let reset_after_ns = grants
            .back()
            .map_or(0, |&g| g.saturating_add(self.window_ns).saturating_sub(now));
        WindowState {
            count,
            remaining,
            reset_after_ns,
            retry_after_ns: self.earliest(grants, now, 1) - now,
        }
    }

    /// How long the key must be kept after `now`: once its last grant left
    /// the window, the key holds nothing.
    pub fn idle_after_ns(&self, grants: &VecDeque<u64>, now: u64) -> u64 {
        grants
            .back()
            .map_or(0, |&g| g.saturating_add(self.window_ns).saturating_sub(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn admits_limit_then_waits_for_the_oldest_to_leave() {
        let w = SlidingWindow::new(3, 1000).unwrap();
        let mut g = VecDeque::new();
        for t in [0, 10, 20] {
            assert_eq!(w.decide(&g, t, 0), Decision::Granted { wait_ns: 0 });
            w.record(&mut g, t, 0);
        }
        assert_eq!(
            w.decide(&g, 30, 0),
            Decision::Denied {
                retry_after_ns: 970
            }
        );
        let st = w.state(&g, 30);
        assert_eq!((st.count, st.remaining, st.retry_after_ns), (3, 0, 970));
        // At 1000 the grant at 0 has left (0, 1000] is the window: room for one.
        assert_eq!(w.decide(&g, 1000, 0), Decision::Granted { wait_ns: 0 });
    }

    #[test]
    fn reservations_queue_in_order() {
        let w = SlidingWindow::new(2, 100).unwrap();
        let mut g = VecDeque::new();
        let mut waits = Vec::new();
        for _ in 0..6 {
            let Decision::Granted { wait_ns } = w.decide(&g, 0, 1000) else {
                panic!()
            };
            w.record(&mut g, 0, wait_ns);
            waits.push(wait_ns);
        }
        assert_eq!(waits, [0, 0, 100, 100, 200, 200]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Promise 1 (docs/design.md): never more than `limit` grants in any window.
        #[test]
        fn never_more_than_limit_in_any_window(
            limit in 1u32..10,
            window in 1u64..10_000,
            arrivals in proptest::collection::vec((0u64..3_000, 0u64..20_000), 1..300),
        ) {
            let w = SlidingWindow::new(limit, window).unwrap();
            let mut g = VecDeque::new();
            let mut now = 0;
            let mut all = Vec::new();
            for (gap, max_wait) in arrivals {
                now += gap;
                if let Decision::Granted { wait_ns } = w.decide(&g, now, max_wait) {
                    w.record(&mut g, now, wait_ns);
                    all.push(now + wait_ns);
                }
            }
            all.sort_unstable();
            for (i, &end) in all.iter().enumerate() {
                let inside = all[..=i].iter().filter(|&&t| t + window > end).count();
                prop_assert!(inside as u32 <= limit, "{inside} grants in the window ending at {end}");
            }
        }

        /// Weighted requests: never more than `limit` grants *counted in
        /// cost* in any window; a cost above the limit is always refused.
        #[test]
        fn weighted_requests_never_exceed_the_limit_in_cost(
            limit in 1u32..12,
            window in 1u64..10_000,
            arrivals in proptest::collection::vec((0u64..3_000, 0u64..20_000, 1u32..14), 1..300),
        ) {
            let w = SlidingWindow::new(limit, window).unwrap();
            let mut g = VecDeque::new();
            let mut now = 0;
            let mut all = Vec::new();
            for (gap, max_wait, cost) in arrivals {
                now += gap;
                match w.decide_n(&g, now, cost, max_wait) {
                    Decision::Granted { wait_ns } => {
                        prop_assert!(cost <= limit);
                        w.record_n(&mut g, now, cost, wait_ns);
                        all.extend(std::iter::repeat_n(now + wait_ns, cost as usize));
                    }
                    Decision::Denied { .. } => {}
                }
            }
            all.sort_unstable();
            for (i, &end) in all.iter().enumerate() {
                let inside = all.iter().filter(|&&t| t <= end && t + window > end).count();
                prop_assert!(inside as u32 <= limit, "{inside} (in cost) in the window ending at {end}, i {i}");
            }
        }
    }

    #[test]
    fn a_weighted_request_waits_for_enough_room() {
        let w = SlidingWindow::new(5, 1000).unwrap();
        let mut g = VecDeque::new();
        assert_eq!(w.decide_n(&g, 0, 3, 0), Decision::Granted { wait_ns: 0 });
        w.record_n(&mut g, 0, 3, 0);
        w.record_n(&mut g, 100, 1, 0);
        // 4 of 5 used: 2 more must wait for the three at 0 to leave.
        assert_eq!(
            w.decide_n(&g, 200, 2, u64::MAX),
            Decision::Granted { wait_ns: 800 }
        );
        assert_eq!(w.decide_n(&g, 200, 1, 0), Decision::Granted { wait_ns: 0 });
        assert!(matches!(
            w.decide_n(&g, 200, 6, u64::MAX),
            Decision::Denied { .. }
        ));
    }
}
