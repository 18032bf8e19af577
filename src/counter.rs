//! Counted windows: grants counted per time slot rather than logged one by
//! one, pure and clock-free. Two algorithms share the math:
//!
//! - **fixed window**: slots as long as the window, counting the current
//!   slot only. At most `limit` per aligned window (boundaries at multiples
//!   of the window on the deciding clock); a span of one window that crosses
//!   a boundary can see up to twice the limit, which is what the algorithm
//!   is and why it is cheap (one counter).
//! - **sliding counter**: the window cut into [`SLIDING_SLOTS`] slots, and a
//!   decision counts every slot that overlaps the window ending now,
//!   including the oldest one only partly inside it. That counts a superset
//!   of the grants the exact sliding window would count, so it never admits
//!   more than the exact window ([`crate::window`]); a grant is forgotten at
//!   most one slot (1/60 of the window) late, which is all it admits less.
//!   Its state is `SLIDING_SLOTS + 1` counters whatever the limit: a 1 h
//!   window with a limit of 100,000 costs the same ~0.5 KiB per key as one
//!   with a limit of 10.
//!
//! A slot `k` covers `[k * width, (k + 1) * width)`; a decision at `now`
//! (slot `s`) counts slots `s - span + 1 ..= s`, and slot `k` stops counting
//! at `(k + span) * width`.

use std::collections::VecDeque;

/// Slots a sliding counter cuts its window into.
pub const SLIDING_SLOTS: u64 = 60;

/// The parameters of one counted window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CountedWindow {
    limit: u32,
    window_ns: u64,
    width_ns: u64,
    span: u64,
}

/// The counts of one key: `first` is the slot of `counts[0]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// The slot of the first count.
    pub first: u64,
    /// Grants per slot, oldest first; at most `span` of them.
    pub counts: VecDeque<u32>,
}

/// What a counted window holds at `now`, or what a decision found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CountedState {
    /// Grants counted in the window ending now.
    pub count: u64,
    /// Grants still possible at once.
    pub remaining: u32,
    /// Nanoseconds until nothing counted now counts any more.
    pub reset_after_ns: u64,
    /// Nanoseconds until `cost` more grants fit (zero when they do now).
    pub retry_after_ns: u64,
}

impl CountedWindow {
    /// At most `limit` per aligned window of `window_ns`. `None` for a zero.
    pub fn fixed(limit: u32, window_ns: u64) -> Option<Self> {
        (limit > 0 && window_ns > 0).then_some(Self {
            limit,
            window_ns,
            width_ns: window_ns,
            span: 1,
        })
    }

    /// At most `limit` in any window of `window_ns` (counted per slot, see
    /// the module docs). `None` for a zero or a window shorter than its slots.
    pub fn sliding(limit: u32, window_ns: u64) -> Option<Self> {
        let width_ns = window_ns / SLIDING_SLOTS;
        (limit > 0 && width_ns > 0).then_some(Self {
            limit,
            window_ns,
            width_ns,
            span: SLIDING_SLOTS + 1,
        })
    }

    /// The configured limit.
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// The window's length in nanoseconds.
    pub fn window_ns(&self) -> u64 {
        self.window_ns
    }

    /// The length of one slot, ns.
    pub fn width_ns(&self) -> u64 {
        self.width_ns
    }

    /// How many slots a decision counts.
    pub fn span(&self) -> u64 {
        self.span
    }

    /// This window with slots of `width_ns` (a store that counts in whole
    /// microseconds rounds its slots up), or `None` for a zero width.
    pub fn with_width(self, width_ns: u64) -> Option<Self> {
        (width_ns > 0).then_some(Self { width_ns, ..self })
    }

    /// True for a fixed window, false for a sliding counter.
    pub fn is_fixed(&self) -> bool {
        self.span == 1
    }

    /// Drops the slots that no longer count at `now` and makes room for
    /// `now`'s slot.
    fn trim(&self, c: &mut Counts, now: u64) {
        let slot = now / self.width_ns;
        let oldest = (slot + 1).saturating_sub(self.span);
        if c.counts.is_empty() || c.first + (c.counts.len() as u64) <= oldest {
            c.counts.clear();
            c.first = slot;
        }
        while c.first < oldest {
            c.counts.pop_front();
            c.first += 1;
        }
        while c.first + (c.counts.len() as u64) <= slot {
            c.counts.push_back(0);
        }
    }

    /// The state at `now` for a request of `cost`, without storing anything
    /// but the trim.
    pub fn state(&self, c: &mut Counts, now: u64, cost: u32) -> CountedState {
        self.trim(c, now);
        let count: u64 = c.counts.iter().map(|&n| u64::from(n)).sum();
        let limit = u64::from(self.limit);
        let remaining = limit.saturating_sub(count) as u32;
        let ends = |k: u64| (k + self.span) * self.width_ns - now;
        let reset_after_ns = c
            .counts
            .iter()
            .rposition(|&n| n > 0)
            .map_or(0, |i| ends(c.first + i as u64));
        let retry_after_ns = if u64::from(cost) > limit {
            self.window_ns
        } else if count + u64::from(cost) <= limit {
            0
        } else {
            // The oldest slots must stop counting until `cost` more fit.
            let mut left = count;
            let mut at = 0;
            for (i, &n) in c.counts.iter().enumerate() {
                left -= u64::from(n);
                if left + u64::from(cost) <= limit {
                    at = ends(c.first + i as u64);
                    break;
                }
            }
            at
        };
        CountedState {
            count,
            remaining,
            reset_after_ns,
            retry_after_ns,
        }
    }

    /// Counts `cost` grants at `now` (decided by [`state`](Self::state)
    /// with a zero `retry_after_ns`).
    pub fn record(&self, c: &mut Counts, now: u64, cost: u32) {
        self.trim(c, now);
        if let Some(last) = c.counts.back_mut() {
            *last = last.saturating_add(cost);
        }
    }

    /// How long after `now` the counts still hold something.
    pub fn idle_after_ns(&self, c: &Counts, now: u64) -> u64 {
        c.counts.iter().rposition(|&n| n > 0).map_or(0, |i| {
            ((c.first + i as u64 + self.span) * self.width_ns).saturating_sub(now)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::window::SlidingWindow;
    use proptest::prelude::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn fixed_window_resets_at_its_boundary() {
        let w = CountedWindow::fixed(3, 10 * S).unwrap();
        let mut c = Counts::default();
        for _ in 0..3 {
            assert_eq!(w.state(&mut c, 4 * S, 1).retry_after_ns, 0);
            w.record(&mut c, 4 * S, 1);
        }
        let s = w.state(&mut c, 4 * S, 1);
        assert_eq!(
            (s.count, s.remaining, s.retry_after_ns, s.reset_after_ns),
            (3, 0, 6 * S, 6 * S)
        );
        assert_eq!(w.state(&mut c, 10 * S, 1).count, 0);
        assert_eq!(w.state(&mut c, 10 * S, 4).retry_after_ns, 10 * S);
    }

    #[test]
    fn sliding_counter_forgets_a_slot_at_most_one_slot_late() {
        let w = CountedWindow::sliding(2, 60 * S).unwrap();
        let mut c = Counts::default();
        w.record(&mut c, 0, 1);
        w.record(&mut c, 30 * S, 1);
        // The first grant (slot 0, 0..1 s) counts until 61 s: one slot late.
        let s = w.state(&mut c, 59 * S, 1);
        assert_eq!((s.count, s.retry_after_ns), (2, 2 * S));
        assert_eq!(w.state(&mut c, 61 * S, 1).retry_after_ns, 0);
    }

    proptest! {
        /// A sliding counter never grants what the exact window would refuse.
        #[test]
        fn sliding_counter_never_admits_more_than_the_exact_window(
            limit in 1u32..8,
            steps in proptest::collection::vec((0u64..3 * S, 1u32..3), 1..120),
        ) {
            let window = 60 * S;
            let counter = CountedWindow::sliding(limit, window).unwrap();
            let exact = SlidingWindow::new(limit, window).unwrap();
            let (mut c, mut log) = (Counts::default(), std::collections::VecDeque::new());
            let mut granted: Vec<(u64, u32)> = Vec::new();
            let mut now = 0;
            for (gap, cost) in steps {
                now += gap;
                if counter.state(&mut c, now, cost).retry_after_ns == 0 {
                    counter.record(&mut c, now, cost);
                    granted.push((now, cost));
                    exact.trim(&mut log, now);
                    // Everything the counter granted, the exact window grants too.
                    let ok = matches!(exact.decide_n(&log, now, cost, 0), crate::window::Decision::Granted { .. });
                    prop_assert!(ok, "counter granted at {now} what the exact window refuses");
                    exact.record_n(&mut log, now, cost, 0);
                }
            }
            // And no window of the configured length holds more than the limit.
            for &(t, _) in &granted {
                let within: u32 = granted.iter().filter(|&&(u, _)| u <= t && u + window > t).map(|&(_, n)| n).sum();
                prop_assert!(within <= limit);
            }
        }
    }
}
