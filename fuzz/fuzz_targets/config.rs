//! Any text, with any values for its `${VAR}`s, parses or fails with an
//! error: never a panic, and an accepted configuration's limiters decide.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // The first line is the value of every variable; the rest is the file.
    let (value, toml) = text.split_once('\n').unwrap_or(("", &text));
    let value = value.to_string();
    let env = move |_: &str| Some(value.clone());
    if let Ok(config) = ratesync::config::Config::parse(toml, "<fuzz>", &env) {
        for (name, spec) in &config.limiters {
            assert!(!name.is_empty());
            if let Some(ratesync::config::RateSpec::TokenBucket(g)) = spec.rate {
                assert!(g.emission_ns() >= 1);
            }
        }
    }
});
