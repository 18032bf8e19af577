//! The token-bucket math (GCRA), pure and clock-free, shared by every engine that computes in Rust.
//!
//! GCRA ("generic cell rate algorithm") is a token bucket expressed as a single
//! number: the *theoretical arrival time* (TAT) of the next conforming request.
//! A bucket of `burst` tokens refilled at `rate` tokens per second admits a
//! request at time `t` when `TAT - tau <= t`, where `T = 1/rate` is the
//! emission interval and `tau = (burst - 1) * T` the burst tolerance.
//!
//! All times are nanoseconds on one monotonic clock chosen by the caller (the
//! engine's, which is the backend's where the backend has one). Nothing here
//! reads a clock, so tests drive it with any arrival sequence they like.
//!
//! Rounding always errs towards admitting *less*: the emission interval is
//! rounded up to a whole nanosecond, so the grants in any interval of length
//! `t` never exceed `burst + rate * t` (docs/design.md, Promises: 1).

/// The parameters of one token bucket, precomputed from `rate` and `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Gcra {
    /// Nanoseconds between two tokens (`1 / rate`, rounded up).
    emission_ns: u64,
    /// `burst` as configured, at least 1.
    burst: u32,
}

/// The outcome of asking a bucket for one slot at time `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// A slot is reserved at `now + wait`; `new_tat` must be stored.
    Granted {
        /// How long after `now` the reserved slot begins (zero: at once).
        wait_ns: u64,
        /// The state to store for the key.
        new_tat: u64,
    },
    /// The earliest slot lies beyond the caller's bound; nothing was reserved.
    Denied {
        /// How long after `now` the earliest slot would begin.
        retry_after_ns: u64,
    },
}

/// What a bucket holds at a given moment, read without consuming anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketState {
    /// Tokens that could be taken at once, `0..=burst`.
    pub remaining: u32,
    /// Nanoseconds until the bucket is full again (zero when full).
    pub reset_after_ns: u64,
    /// Nanoseconds until the next token is available (zero when one is).
    pub retry_after_ns: u64,
}

impl Gcra {
    /// A bucket refilled at `rate_per_second` holding at most `burst` tokens.
    ///
    /// Returns `None` for a rate that is not finite and positive, a burst of
    /// 0, or a bucket whose refill time (`burst / rate`) passes a quarter of
    /// `u64` nanoseconds (about 146 years): its tolerance would saturate and
    /// admit without limit. The configuration layer turns that into an
    /// error naming the field (and allows at most 10 years).
    pub fn new(rate_per_second: f64, burst: u32) -> Option<Self> {
        if !(rate_per_second.is_finite() && rate_per_second > 0.0) || burst == 0 {
            return None;
        }
        if f64::from(burst) * 1e9 / rate_per_second > (u64::MAX / 4) as f64 {
            return None;
        }
        let emission = (1e9 / rate_per_second).ceil();
        // A rate above 1e9/s would round to a zero interval and admit without
        // limit; one nanosecond is the finest the clock can express.
        let emission_ns = if emission < 1.0 {
            1
        } else if emission >= u64::MAX as f64 {
            u64::MAX / 4
        } else {
            emission as u64
        };
        Some(Self { emission_ns, burst })
    }

    /// A bucket with an exact emission interval (at least 1 ns) and `burst`
    /// (at least 1), for engines that compute at a coarser granularity.
    pub fn with_emission_ns(emission_ns: u64, burst: u32) -> Self {
        Self {
            emission_ns: emission_ns.max(1),
            burst: burst.max(1),
        }
    }

    /// Nanoseconds between two tokens.
    pub fn emission_ns(&self) -> u64 {
        self.emission_ns
    }

    /// The configured burst.
    pub fn burst(&self) -> u32 {
        self.burst
    }

    /// `tau`: how far ahead of `now` the TAT may run while a request still conforms.
    fn tolerance_ns(&self) -> u64 {
        self.emission_ns.saturating_mul(u64::from(self.burst - 1))
    }

    /// Asks for `cost` tokens at `now`, accepting a slot at most `max_wait_ns` away.
    ///
    /// `tat` is the stored state (`None` for a key never seen or expired). On
    /// `Granted` the caller stores `new_tat`; on `Denied` it stores nothing.
    /// A `cost` above `burst` can never conform and is always denied with the
    /// time the bucket would need to refill completely.
    pub fn decide(&self, tat: Option<u64>, now: u64, cost: u32, max_wait_ns: u64) -> Decision {
        let cost = cost.max(1);
        let tat = tat.unwrap_or(now).max(now);
        let increment = self.emission_ns.saturating_mul(u64::from(cost));
        // The request conforms once new_tat - tau <= start, i.e. start >= tat + increment - T - tau.
        let new_tat = tat.saturating_add(increment);
        let allow_at = new_tat
            .saturating_sub(self.emission_ns)
            .saturating_sub(self.tolerance_ns());
        if cost > self.burst {
            return Decision::Denied {
                retry_after_ns: allow_at.saturating_sub(now).max(self.emission_ns),
            };
        }
        let wait_ns = allow_at.saturating_sub(now);
        if wait_ns > max_wait_ns {
            Decision::Denied {
                retry_after_ns: wait_ns,
            }
        } else {
            Decision::Granted { wait_ns, new_tat }
        }
    }

    /// The bucket's contents at `now`, given the stored `tat`.
    pub fn state(&self, tat: Option<u64>, now: u64) -> BucketState {
        let tat = tat.unwrap_or(now).max(now);
        let used_ns = tat - now;
        // Tokens in use = ceil(used / T); the rest of the burst is available.
        let in_use = used_ns.div_ceil(self.emission_ns);
        let remaining = u64::from(self.burst).saturating_sub(in_use) as u32;
        let retry_after_ns = match self.decide(Some(tat), now, 1, u64::MAX) {
            Decision::Granted { wait_ns, .. } => wait_ns,
            Decision::Denied { retry_after_ns } => retry_after_ns,
        };
        BucketState {
            remaining,
            reset_after_ns: used_ns,
            retry_after_ns,
        }
    }

    /// How long a stored `tat` stays meaningful after `now`: past it the key
    /// is a full bucket and may be forgotten.
    pub fn idle_after_ns(&self, tat: u64, now: u64) -> u64 {
        tat.saturating_sub(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn rejects_invalid_parameters() {
        assert!(Gcra::new(0.0, 1).is_none());
        assert!(Gcra::new(-1.0, 1).is_none());
        assert!(Gcra::new(f64::NAN, 1).is_none());
        assert!(Gcra::new(f64::INFINITY, 1).is_none());
        assert!(Gcra::new(1.0, 0).is_none());
    }

    #[test]
    fn burst_then_steady_rate() {
        let g = Gcra::new(10.0, 3).unwrap();
        let mut tat = None;
        for _ in 0..3 {
            match g.decide(tat, 0, 1, 0) {
                Decision::Granted { wait_ns, new_tat } => {
                    assert_eq!(wait_ns, 0);
                    tat = Some(new_tat);
                }
                d => panic!("burst should be granted, got {d:?}"),
            }
        }
        assert_eq!(
            g.decide(tat, 0, 1, 0),
            Decision::Denied {
                retry_after_ns: SEC / 10
            }
        );
        // Reserving ahead: the next slot is 100 ms away, the one after 200 ms.
        let Decision::Granted { wait_ns, new_tat } = g.decide(tat, 0, 1, SEC) else {
            panic!()
        };
        assert_eq!(wait_ns, SEC / 10);
        let Decision::Granted { wait_ns, .. } = g.decide(Some(new_tat), 0, 1, SEC) else {
            panic!()
        };
        assert_eq!(wait_ns, 2 * SEC / 10);
    }

    #[test]
    fn state_reports_remaining_and_reset() {
        let g = Gcra::new(1.0, 5).unwrap();
        let s = g.state(None, 0);
        assert_eq!(s.remaining, 5);
        assert_eq!(s.reset_after_ns, 0);
        let Decision::Granted { new_tat, .. } = g.decide(None, 0, 2, 0) else {
            panic!()
        };
        let s = g.state(Some(new_tat), 0);
        assert_eq!(s.remaining, 3);
        assert_eq!(s.reset_after_ns, 2 * SEC);
        assert_eq!(s.retry_after_ns, 0);
        // Half a second later half a token is back: still 3 whole ones.
        assert_eq!(g.state(Some(new_tat), SEC / 2).remaining, 3);
        assert_eq!(g.state(Some(new_tat), SEC).remaining, 4);
    }

    #[test]
    fn cost_above_burst_is_never_granted() {
        let g = Gcra::new(1.0, 2).unwrap();
        assert!(matches!(
            g.decide(None, 0, 3, u64::MAX),
            Decision::Denied { .. }
        ));
    }

    #[test]
    fn very_high_rates_still_limit() {
        let g = Gcra::new(1e12, 1).unwrap();
        assert_eq!(g.emission_ns(), 1);
        let Decision::Granted { new_tat, .. } = g.decide(None, 0, 1, 0) else {
            panic!()
        };
        assert!(matches!(
            g.decide(Some(new_tat), 0, 1, 0),
            Decision::Denied { .. }
        ));
    }

    /// Replays arrivals through the bucket and returns the grant times
    /// (`arrival + wait`), as an engine would schedule them.
    fn run(g: &Gcra, arrivals: &[(u64, u64)]) -> Vec<u64> {
        let mut tat = None;
        let mut grants = Vec::new();
        for &(now, max_wait) in arrivals {
            if let Decision::Granted { wait_ns, new_tat } = g.decide(tat, now, 1, max_wait) {
                tat = Some(new_tat);
                grants.push(now + wait_ns);
            }
        }
        grants.sort_unstable();
        grants
    }

    /// Every interval of the sorted grants, exactly: grants `i..=j` need
    /// `(count - burst)` emission intervals between the first and the last,
    /// i.e. `(g_j - j*T) - (g_i - i*T) >= (1 - burst) * T`. One pass keeps
    /// the largest `g_i - i*T` so far, in 128-bit integers (no rounding).
    fn exact_bound(grants: &[u64], emission_ns: u64, burst: u32) -> Result<(), String> {
        let e = i128::from(emission_ns);
        let mut worst: Option<(i128, usize)> = None;
        for (j, &gj) in grants.iter().enumerate() {
            let key = i128::from(gj) - j as i128 * e;
            if worst.is_none_or(|(w, _)| key > w) {
                worst = Some((key, j));
            }
            let (w, i) = worst.unwrap_or((key, j));
            if key - w < (1 - i128::from(burst)) * e {
                let span = i128::from(gj) - i128::from(grants[i]);
                return Err(format!(
                    "{} grants in {span} ns, where a bucket allows {}",
                    j - i + 1,
                    i128::from(burst) + span / e
                ));
            }
        }
        Ok(())
    }

    #[test]
    fn the_exact_checker_sees_one_grant_too_many() {
        assert!(exact_bound(&[0, 0], 10, 2).is_ok());
        assert!(exact_bound(&[0, 0, 0], 10, 2).is_err());
        assert!(exact_bound(&[0, 0, 10, 20], 10, 2).is_ok());
        assert!(exact_bound(&[0, 0, 10, 19], 10, 2).is_err(), "one ns early");
        assert!(exact_bound(&[5, 100, 100, 100], 10, 2).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Promise 1 (docs/design.md): in every interval of length t, grants <= burst + rate * t.
        #[test]
        fn never_over_admits(
            rate in prop_oneof![0.5f64..5.0, 5.0f64..500.0, 500.0f64..1e6],
            burst in 1u32..20,
            gaps in proptest::collection::vec((0u64..50_000_000, 0u64..200_000_000), 1..400),
        ) {
            let g = Gcra::new(rate, burst).unwrap();
            let mut now = 0;
            let arrivals: Vec<(u64, u64)> = gaps.iter().map(|&(gap, wait)| { now += gap; (now, wait) }).collect();
            let grants = run(&g, &arrivals);
            // Every interval, exactly (not a few chosen lengths).
            if let Err(e) = exact_bound(&grants, g.emission_ns(), burst) {
                prop_assert!(false, "{} (rate {}, burst {})", e, rate, burst);
            }
        }

        /// Weighted requests (`cost` tokens each): in every interval, tokens
        /// granted <= burst + rate * t, checked exactly on the grants
        /// expanded to one per token; a cost above the burst never passes.
        #[test]
        fn weighted_requests_never_over_admit_in_tokens(
            rate in prop_oneof![0.5f64..5.0, 5.0f64..500.0, 500.0f64..1e6],
            burst in 1u32..20,
            arrivals in proptest::collection::vec((0u64..50_000_000, 0u64..200_000_000, 1u32..24), 1..300),
        ) {
            let g = Gcra::new(rate, burst).unwrap();
            let (mut now, mut tat, mut tokens) = (0, None, Vec::new());
            for (gap, max_wait, cost) in arrivals {
                now += gap;
                if let Decision::Granted { wait_ns, new_tat } = g.decide(tat, now, cost, max_wait) {
                    prop_assert!(cost <= burst, "a cost of {} passed a burst of {}", cost, burst);
                    tat = Some(new_tat);
                    tokens.extend(std::iter::repeat_n(now + wait_ns, cost as usize));
                }
            }
            tokens.sort_unstable();
            if let Err(e) = exact_bound(&tokens, g.emission_ns(), burst) {
                prop_assert!(false, "{} (rate {}, burst {})", e, rate, burst);
            }
        }

        /// At the extremes: rates log-uniform over 1e-9..1e9 per second,
        /// bursts up to 1e6, clocks from zero through today's Unix
        /// nanoseconds up to 2^63, waits up to the 10 years any setting
        /// allows. Every bucket `new` accepts keeps the exact bound over
        /// every interval; the rest are refused. (The domain: engine clocks
        /// below 2^63 ns, ~292 years; then no TAT can pass u64.)
        #[test]
        fn never_over_admits_at_the_extremes(
            log_rate in -9.0f64..9.0,
            burst in prop_oneof![1u32..4, 2u32..200, 1u32..1_000_000],
            start in prop_oneof![Just(1_700_000_000_000_000_000u64), Just(1u64 << 62), 0u64..(1u64 << 62)],
            steps in proptest::collection::vec((prop_oneof![0u64..3, 0u64..3_000], 0u64..4_000), 1..300),
        ) {
            let rate = 10f64.powf(log_rate);
            let Some(g) = Gcra::new(rate, burst) else {
                // Refused only when the refill time passes u64::MAX / 4 ns.
                prop_assert!(f64::from(burst) * 1e9 / rate > (u64::MAX / 4) as f64 * 0.999);
                return Ok(());
            };
            let e = g.emission_ns();
            let mut now = start;
            const TEN_YEARS_NS: u64 = 315_360_000 * SEC;
            let arrivals: Vec<(u64, u64)> = steps
                .iter()
                .map(|&(gap, wait)| {
                    // Gaps and waits in thousandths of an emission interval.
                    now = now.saturating_add(e / 1000 * gap + gap);
                    (now, (e / 1000).saturating_mul(wait).min(TEN_YEARS_NS))
                })
                .take_while(|&(t, _)| t < 1 << 63)
                .collect();
            let grants = run(&g, &arrivals);
            if let Err(msg) = exact_bound(&grants, e, burst) {
                prop_assert!(false, "{} (rate {}, burst {}, T {} ns)", msg, rate, burst, e);
            }
        }

        /// Buckets whose refill time nears or passes u64 nanoseconds (where
        /// the tolerance saturated and once admitted without limit: rate
        /// 1e-7/s, burst 2000 granted 2100 of 2100): refused, or exact.
        #[test]
        fn huge_refill_times_are_refused_or_exact(
            burst in 2u32..300,
            log2_refill in 58.0f64..67.0,
            start in prop_oneof![Just(0u64), Just(1_700_000_000_000_000_000u64)],
        ) {
            let rate = f64::from(burst) * 1e9 / 2f64.powf(log2_refill);
            let Some(g) = Gcra::new(rate, burst) else { return Ok(()) };
            let arrivals: Vec<(u64, u64)> = (0..burst + 50).map(|_| (start, 0)).collect();
            let granted = run(&g, &arrivals).len();
            prop_assert!(granted <= burst as usize, "{granted} granted at once, burst {burst}, rate {rate}");
        }

        /// Promise 2 (docs/design.md): callers that wait (reserve) are admitted at exactly the rate.
        #[test]
        fn waiting_callers_get_the_full_rate(rate in 1.0f64..10_000.0, burst in 1u32..10) {
            let g = Gcra::new(rate, burst).unwrap();
            let horizon = 2 * SEC;
            let step = ((1e9 / rate) / 4.0).max(1.0) as u64;
            let arrivals: Vec<(u64, u64)> = (0..).map(|i| (i * step, u64::MAX)).take_while(|&(t, _)| t < horizon).collect();
            let grants = run(&g, &arrivals).iter().filter(|&&t| t <= horizon).count() as f64;
            let expected = f64::from(burst) + rate * 2.0;
            prop_assert!(grants >= expected * 0.99 - 1.0, "{grants} grants by the horizon, expected about {expected}");
        }

        /// Callers that never wait lose nothing to the gaps between arrivals
        /// once the bucket holds two tokens. (With `burst = 1` each grant can
        /// lose up to one inter-arrival gap: GCRA does not bank unused time.)
        #[test]
        fn try_callers_get_the_full_rate_with_a_burst(rate in 1.0f64..10_000.0, burst in 2u32..10) {
            let g = Gcra::new(rate, burst).unwrap();
            let horizon = 2 * SEC;
            // A caller every 1/(4*rate): demand is four times the limit.
            let step = ((1e9 / rate) / 4.0).max(1.0) as u64;
            let arrivals: Vec<(u64, u64)> = (0..).map(|i| (i * step, 0)).take_while(|&(t, _)| t < horizon).collect();
            let grants = run(&g, &arrivals).len() as f64;
            let expected = f64::from(burst) + rate * 2.0;
            prop_assert!(grants >= expected * 0.97 - 1.0, "{grants} grants, expected about {expected}");
        }

        /// Reservations are handed out in order and never earlier than asked.
        #[test]
        fn waits_are_monotonic(rate in 1.0f64..1000.0, burst in 1u32..5, n in 1usize..100) {
            let g = Gcra::new(rate, burst).unwrap();
            let mut tat = None;
            let mut last = 0;
            for _ in 0..n {
                let Decision::Granted { wait_ns, new_tat } = g.decide(tat, 0, 1, u64::MAX) else { unreachable!() };
                prop_assert!(wait_ns >= last);
                last = wait_ns;
                tat = Some(new_tat);
            }
        }
    }
}
