//! Checks recorded grant times against a limit, for load tests and benches.
//!
//! A load test that records when each permit's slot began (for example
//! [`Permit::slot_unix_us`](crate::Permit::slot_unix_us), merged over every
//! process) can prove the promises of a limiter with these functions: no
//! interval holds more than `burst + rate·t` grants of a token bucket, no
//! window more than `limit` grants of a sliding window, and no instant more
//! holders than `max_concurrent`. `ratesync bench` and the integration tests
//! use them; they are public so your own load tests can too.
//!
//! ```
//! use ratesync::audit::{max_excess, max_in_window};
//! // 10/s with bursts of 2: 0 ms, 0 ms, then one every 100 ms.
//! let slots = [0, 0, 100_000, 200_000, 300_000];
//! assert!(max_excess(&slots, 10.0) <= 2.0 + 1e-9);
//! assert_eq!(max_in_window(&slots, 150_000), 3);
//! ```

/// The largest `count − rate·t` over every interval `[s_i, s_j]` of the
/// sorted slot times (µs): a token bucket of `rate` per second kept its
/// promise exactly when this is at most its `burst`.
///
/// One pass: for grants `i..=j` the excess is `(j − i + 1) − rate·(s_j − s_i)`,
/// so it keeps the best `rate·s_i − i` seen so far.
pub fn max_excess(sorted_slots_us: &[u64], rate_per_second: f64) -> f64 {
    let Some(&t0) = sorted_slots_us.first() else {
        return 0.0;
    };
    let per_us = rate_per_second / 1e6;
    let mut best = f64::NEG_INFINITY;
    let mut max = f64::NEG_INFINITY;
    for (j, &s) in sorted_slots_us.iter().enumerate() {
        let x = s.saturating_sub(t0) as f64 * per_us;
        best = best.max(x - j as f64);
        max = max.max(j as f64 - x + best + 1.0);
    }
    max
}

/// The most grants any window `(s − window, s]` ending at a grant holds,
/// over sorted slot times (µs).
pub fn max_in_window(sorted_slots_us: &[u64], window_us: u64) -> usize {
    let mut i = 0;
    let mut best = 0;
    for (j, &s) in sorted_slots_us.iter().enumerate() {
        while s - sorted_slots_us[i] >= window_us {
            i += 1;
        }
        best = best.max(j - i + 1);
    }
    best
}

/// The most `[from, to)` holding intervals that overlap at any instant.
pub fn max_overlap(intervals: impl IntoIterator<Item = (u64, u64)>) -> usize {
    let mut events: Vec<(u64, i32)> = intervals
        .into_iter()
        .flat_map(|(from, to)| [(from, 1), (to, -1)])
        .collect();
    // At equal times, ends sort first: a release then a grant is no overlap.
    events.sort_unstable();
    let (mut now, mut best) = (0i64, 0i64);
    for (_, d) in events {
        now += i64::from(d);
        best = best.max(now);
    }
    usize::try_from(best).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_beyond_the_bucket_is_seen() {
        // 10/s: three grants at once exceed a burst of 2.
        assert!((max_excess(&[0, 0, 0], 10.0) - 3.0).abs() < 1e-9);
        // Spaced at the emission interval the excess stays 1.
        let spaced: Vec<u64> = (0..100).map(|i| i * 100_000).collect();
        assert!((max_excess(&spaced, 10.0) - 1.0).abs() < 1e-9);
        assert_eq!(max_excess(&[], 10.0), 0.0);
    }

    #[test]
    fn windows_and_overlaps() {
        assert_eq!(max_in_window(&[0, 10, 20, 1_000], 21), 3);
        assert_eq!(max_in_window(&[0, 10, 20, 1_000], 20), 2);
        assert_eq!(max_overlap([(0, 10), (10, 20), (5, 15)]), 2);
    }
}
