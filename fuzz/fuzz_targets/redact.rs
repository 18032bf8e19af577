//! Redaction never panics, and a password put in a URL's user info never
//! survives it.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ratesync::secret::redact;

fuzz_target!(|parts: (&str, &str)| {
    let (text, password) = parts;
    let _ = redact(text);
    if password.len() >= 4
        && password
            .bytes()
            .all(|b| b.is_ascii_alphanumeric())
        && !"redis://***@host:6379/0".contains(password)
    {
        let url = format!("redis://user:{password}@host:6379/0");
        assert!(!redact(&url).contains(password), "{url}");
    }
});
