//! One logged decision, and the bounds that keep a hostile client's input
//! from breaking the sinks.
//!
//! Every text field comes from the client (or from the configuration) and
//! is made safe here, once, before it is queued: NUL, which PostgreSQL
//! refuses in `text` (one such key would fail its whole batch), becomes
//! U+FFFD, and each field is cut to a bound (a key keeps its distinctness:
//! a long one is cut and followed by the digest of the whole).

use std::borrow::Cow;
use std::net::IpAddr;

/// The longest key kept, in bytes (longer ones: a prefix, `~`, a digest).
pub const MAX_LOGGED_KEY: usize = 512;
/// The longest path kept, in bytes.
pub const MAX_LOGGED_PATH: usize = 1024;
/// The longest user, tier or method kept, in bytes.
pub const MAX_LOGGED_FIELD: usize = 256;

/// One decision as the log keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecisionEvent {
    /// Where the event was made (random per thread of each process), with
    /// `seq` the event's unique id: a batch written again after an unclear
    /// failure is not counted twice.
    pub origin: i64,
    /// The event's number within its origin (set when it is queued).
    pub seq: i64,
    /// When it was decided, microseconds since the Unix epoch.
    pub ts_us: i64,
    /// The client's key (the policy's key parts joined by `|`), or its
    /// keyed digest under `log_keys = "hashed"`.
    pub key: String,
    /// The policy.
    pub policy: Cow<'static, str>,
    /// The deciding window (`""` when none decided: exempt, deny, a store failure).
    pub window: Cow<'static, str>,
    /// The client's tier.
    pub tier: Option<String>,
    /// The request's path.
    pub path: Option<String>,
    /// The request's method.
    pub method: Option<String>,
    /// Admitted (in shadow mode, also what would have been refused).
    pub allowed: bool,
    /// `allow`, `throttle`, `block`, `deny`, `exempt`, or `shadow` (admitted
    /// in monitor mode, would have been refused).
    pub action: Cow<'static, str>,
    /// The deciding window's count after the decision.
    pub count: u32,
    /// The deciding window's limit.
    pub limit: Option<u32>,
    /// The request's cost.
    pub cost: u32,
    /// The client's address, as `log_ips` keeps it.
    pub ip: Option<IpAddr>,
    /// The authenticated user (digested like the key under `log_keys = "hashed"`).
    pub user: Option<String>,
    /// The host that decided.
    pub host: Cow<'static, str>,
    /// The configuration version in force.
    pub config_version: u64,
}

impl DecisionEvent {
    /// The start of the event's minute, seconds since the Unix epoch.
    pub fn minute(&self) -> i64 {
        self.ts_us.div_euclid(60_000_000) * 60
    }
}

/// `text` safe for every sink: no NUL, at most `max` bytes (cut at a
/// character boundary).
pub fn bounded(text: &str, max: usize) -> String {
    let clean = without_nul(text);
    let mut end = clean.len().min(max);
    while !clean.is_char_boundary(end) {
        end -= 1;
    }
    clean[..end].to_string()
}

fn without_nul(text: &str) -> Cow<'_, str> {
    if text.contains('\0') {
        Cow::Owned(text.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(text)
    }
}

/// A key safe for every sink and still one per client: a key over
/// [`MAX_LOGGED_KEY`] bytes keeps its first part, then `~` and the digest
/// of the whole, so two long keys stay two.
pub fn bounded_key(key: &str) -> String {
    bounded_key_owned(key.to_string())
}

/// [`bounded_key`] of a key already owned: kept as it is when it fits.
pub fn bounded_key_owned(key: String) -> String {
    if key.len() <= MAX_LOGGED_KEY && !key.contains('\0') {
        return key;
    }
    let clean = without_nul(&key);
    if clean.len() <= MAX_LOGGED_KEY {
        return clean.into_owned();
    }
    let digest = crate::key::hash_key(&key);
    let mut out = bounded(&clean, MAX_LOGGED_KEY - 1 - digest.len());
    out.push('~');
    out.push_str(&digest);
    out
}

#[cfg(test)]
mod tests {
    use crate::decision_log::event::*;
    use proptest::prelude::*;

    #[test]
    fn nul_is_replaced_and_length_bounded() {
        assert_eq!(bounded("a\0b", 10), "a\u{FFFD}b");
        assert_eq!(bounded("ééé", 3), "é");
        let long = "k".repeat(10_000);
        let a = bounded_key(&long);
        let b = bounded_key(&format!("{long}x"));
        assert!(a.len() <= MAX_LOGGED_KEY && b.len() <= MAX_LOGGED_KEY);
        assert_ne!(a, b);
    }

    proptest! {
        #[test]
        fn any_key_is_bounded_and_nul_free(key in ".{0,700}") {
            let k = bounded_key(&key);
            prop_assert!(k.len() <= MAX_LOGGED_KEY);
            prop_assert!(!k.contains('\0'));
        }
    }
}
