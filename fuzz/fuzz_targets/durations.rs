//! Any text is a duration in range or an error, never a panic, and an
//! accepted duration can be added to a clock reading.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ratesync::duration::{parse_seconds, Range};

fuzz_target!(|text: &str| {
    for range in [Range::POSITIVE, Range::ZERO_OR_MORE, Range::at_least(0.001)] {
        if let Ok(d) = parse_seconds(text, range) {
            assert!(std::time::Instant::now().checked_add(d).is_some());
            assert!(d.as_secs_f64() >= range.min && d.as_secs_f64() <= range.max);
        }
    }
});
