//! Time as the engines count it inside, and the only conversions to and
//! from it.
//!
//! Durations cross the engine boundary; inside, the pure math ([`gcra`](crate::gcra),
//! [`window`](crate::window), [`lease`](crate::lease)) and the in-process
//! engines count unsigned **nanoseconds** (`u64`), and the Redis scripts and
//! PostgreSQL functions count signed **microseconds** (`i64`, their integer
//! type). Every conversion saturates rather than wraps, and a negative
//! microsecond count (a time already past) reads as zero.

use std::time::Duration;

/// Whole nanoseconds of `d`, saturating at `u64::MAX` (584 years).
pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// `n` nanoseconds as a duration.
pub(crate) fn from_nanos(n: u64) -> Duration {
    Duration::from_nanos(n)
}

/// Whole microseconds of `d`, saturating at `i64::MAX`.
pub(crate) fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// `v` microseconds as a duration; negative reads as zero.
#[cfg_attr(not(any(feature = "redis", feature = "postgres")), allow(dead_code))]
pub(crate) fn from_micros(v: i64) -> Duration {
    Duration::from_micros(u64::try_from(v).unwrap_or(0))
}

/// `v` microseconds in nanoseconds; negative reads as zero.
#[cfg_attr(not(any(feature = "redis", feature = "postgres")), allow(dead_code))]
pub(crate) fn micros_to_nanos(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0).saturating_mul(1000)
}

/// `n` nanoseconds in whole microseconds, rounded up (so an interval in a
/// script is never shorter than the limit's), at least 1, saturating.
pub(crate) fn nanos_to_micros_up(n: u64) -> i64 {
    i64::try_from(n.div_ceil(1000).max(1)).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_saturate_and_round_as_documented() {
        assert_eq!(nanos(Duration::MAX), u64::MAX);
        assert_eq!(micros(Duration::MAX), i64::MAX);
        assert_eq!(from_micros(-5), Duration::ZERO);
        assert_eq!(micros_to_nanos(-1), 0);
        assert_eq!(micros_to_nanos(i64::MAX), u64::MAX);
        assert_eq!(nanos_to_micros_up(142_858), 143);
        assert_eq!(nanos_to_micros_up(0), 1);
        assert_eq!(
            nanos_to_micros_up(u64::MAX),
            i64::try_from(u64::MAX / 1000 + 1).unwrap()
        );
        assert_eq!(
            from_nanos(nanos(Duration::from_nanos(7))),
            Duration::from_nanos(7)
        );
    }
}
