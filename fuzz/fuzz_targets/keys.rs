//! Any two keys encode into the safe alphabet, within the length bound, and
//! differently when they differ.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ratesync::StateKey;

fuzz_target!(|pair: (&str, &str)| {
    let (a, b) = pair;
    let base = StateKey::new("fuzz");
    let (ka, kb) = (base.child(a), base.child(b));
    for k in [&ka, &kb] {
        assert!(k.encoded().len() <= ratesync::MAX_ENCODED_LEN);
        assert!(k
            .encoded()
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"-_=.".contains(&c)));
    }
    if a != b {
        assert_ne!(ka, kb, "{a:?} and {b:?} share a state key");
    }
});
