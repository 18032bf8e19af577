//! Every duration a person writes (configuration, environment, command line)
//! is checked here, once, into a [`Duration`]: finite, within the range the
//! setting supports, and never a value that would overflow a clock later.
//!
//! ```
//! use ratesync::duration::{seconds, Range};
//! assert_eq!(seconds(1.5, Range::POSITIVE).unwrap().as_millis(), 1500);
//! assert_eq!(
//!     seconds(f64::INFINITY, Range::POSITIVE).unwrap_err(),
//!     "must be at most 315360000 (10 years) seconds, got inf"
//! );
//! assert!(ratesync::duration::parse_seconds("1e20", Range::ZERO_OR_MORE).is_err());
//! ```

use std::time::Duration;

/// The longest duration any setting takes: 10 years. Longer waits,
/// windows and refill times are refused rather than left to overflow
/// nanosecond clocks and timer wheels.
pub const MAX_SECONDS: f64 = 10.0 * 365.0 * 86_400.0;

/// The values a setting accepts, in seconds (both ends included).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Range {
    /// The smallest value.
    pub min: f64,
    /// The largest value.
    pub max: f64,
}

impl Range {
    /// Any positive duration down to a microsecond (the finest any store
    /// keeps), up to [`MAX_SECONDS`].
    pub const POSITIVE: Range = Range::at_least(0.000_001);
    /// Zero (do not wait) or a positive duration up to [`MAX_SECONDS`].
    pub const ZERO_OR_MORE: Range = Range::at_least(0.0);

    /// From `min` up to [`MAX_SECONDS`].
    pub const fn at_least(min: f64) -> Range {
        Range {
            min,
            max: MAX_SECONDS,
        }
    }
}

fn show(v: f64) -> String {
    if v == MAX_SECONDS {
        format!("{v:.0} (10 years)")
    } else {
        // Shortest form that reads back as the same number: 0.001, 1, 2.5.
        let s = format!("{v}");
        s.strip_suffix(".0").map_or(s.clone(), str::to_string)
    }
}

/// `value` seconds as a duration, or what is wrong with it (to be prefixed
/// with the field or variable that holds it).
pub fn seconds(value: f64, range: Range) -> Result<Duration, String> {
    let wrong = if value.is_nan() {
        Some("must be a number of seconds".to_string())
    } else if value > range.max {
        Some(format!("must be at most {} seconds", show(range.max)))
    } else if value < range.min {
        Some(if range.min == 0.0 {
            "must be a number of seconds >= 0".to_string()
        } else if value <= 0.0 {
            "must be a positive number of seconds".to_string()
        } else {
            format!("must be at least {} seconds", show(range.min))
        })
    } else {
        None
    };
    if let Some(wrong) = wrong {
        return Err(format!("{wrong}, got {value}"));
    }
    Duration::try_from_secs_f64(value).map_err(|e| format!("{value} seconds: {e}"))
}

/// Text as a duration in `range`: a number of seconds (`"2.5"`, `"30"`), or
/// one with a unit, `ms`, `s`, `m`, `h` or `d` (`"500ms"`, `"1s"`, `"2m"`, `"1d"`);
/// anything else is an error that quotes it.
pub fn parse_seconds(text: &str, range: Range) -> Result<Duration, String> {
    let t = text.trim();
    let (number, scale) = [
        ("ms", 1e-3),
        ("s", 1.0),
        ("m", 60.0),
        ("h", 3600.0),
        ("d", 86_400.0),
    ]
    .iter()
    .find_map(|&(unit, scale)| t.strip_suffix(unit).map(|n| (n.trim_end(), scale)))
    .unwrap_or((t, 1.0));
    let value: f64 = number.parse().map_err(|_| {
        format!("must be a number of seconds (or with a unit: 500ms, 1s, 2m, 1h, 1d), got {text:?}")
    })?;
    seconds(value * scale, range)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn refuses_what_would_panic_or_overflow() {
        for v in [
            f64::NAN,
            f64::INFINITY,
            -1.0,
            1e20,
            1.8e19,
            MAX_SECONDS * 1.01,
        ] {
            assert!(seconds(v, Range::ZERO_OR_MORE).is_err(), "{v}");
        }
        assert!(seconds(0.0, Range::POSITIVE).is_err());
        assert_eq!(seconds(0.0, Range::ZERO_OR_MORE), Ok(Duration::ZERO));
        assert_eq!(
            seconds(0.000001, Range::at_least(0.001)).unwrap_err(),
            "must be at least 0.001 seconds, got 0.000001"
        );
        assert_eq!(
            parse_seconds("abc", Range::POSITIVE).unwrap_err(),
            "must be a number of seconds (or with a unit: 500ms, 1s, 2m, 1h, 1d), got \"abc\""
        );
        assert_eq!(
            parse_seconds("1.5s", Range::POSITIVE),
            Ok(Duration::from_millis(1500))
        );
        assert_eq!(
            parse_seconds(" 250 ms ", Range::POSITIVE),
            Ok(Duration::from_millis(250))
        );
        assert_eq!(
            parse_seconds("2h", Range::POSITIVE),
            Ok(Duration::from_secs(7200))
        );
        assert!(parse_seconds("ms", Range::POSITIVE).is_err());
        assert!(
            parse_seconds("1e9h", Range::POSITIVE).is_err(),
            "beyond 10 years"
        );
        assert!(parse_seconds("inf", Range::POSITIVE).is_err());
    }

    proptest! {
        /// Whatever the text, parsing never panics, and an accepted value
        /// can be added to a clock reading and slept on.
        #[test]
        fn any_text_parses_or_errs(text in ".{0,24}", v in any::<f64>()) {
            let _ = parse_seconds(&text, Range::ZERO_OR_MORE);
            if let Ok(d) = seconds(v, Range::ZERO_OR_MORE) {
                prop_assert!(std::time::Instant::now().checked_add(d).is_some());
                prop_assert!(u64::try_from(d.as_nanos()).is_ok());
            }
        }
    }
}
