//! Key encoding and hashing: any caller key maps to one backend-safe key, and no two collide.
//!
//! Caller keys are IPs, user ids, e-mails, unicode, `*`, spaces, dots
//! (DESIGN.md §3.8). Every engine addresses state by the encoded form built
//! here, which uses only `[-_=.a-zA-Z0-9]`: the characters NATS KV allows, and
//! safe in Redis keys, SQL text and file names. The encoding is injective:
//! letters, digits, `-` and `_` stand for themselves, every other byte becomes
//! `=XX` (upper-case hex), and `.` separates the parts of a key, so
//! `("a.b")` and `("a", "b")` differ.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::fmt::Write as _;
use std::sync::Arc;

/// The address of one piece of limiter state: a limiter and, for per-key
/// limiters, the caller's key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StateKey {
    limiter: Arc<str>,
    encoded: Arc<str>,
}

impl StateKey {
    /// The state of limiter `limiter` itself (no caller key).
    pub fn new(limiter: &str) -> Self {
        Self {
            limiter: limiter.into(),
            encoded: encode_part(limiter).into(),
        }
    }

    /// The state of `self` narrowed to caller key `key`.
    pub fn child(&self, key: &str) -> Self {
        let mut encoded = String::with_capacity(self.encoded.len() + 1 + key.len());
        encoded.push_str(&self.encoded);
        encoded.push('.');
        push_encoded(&mut encoded, key);
        Self {
            limiter: self.limiter.clone(),
            encoded: encoded.into(),
        }
    }

    /// The limiter's name.
    pub fn limiter(&self) -> &str {
        &self.limiter
    }

    /// The backend-safe, collision-free form: `[-_=.a-zA-Z0-9]` only.
    pub fn encoded(&self) -> &str {
        &self.encoded
    }
}

/// Encodes one part of a key (see the module docs).
pub fn encode_part(part: &str) -> String {
    let mut out = String::with_capacity(part.len());
    push_encoded(&mut out, part);
    out
}

fn push_encoded(out: &mut String, part: &str) {
    for b in part.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(b as char);
        } else {
            let _ = write!(out, "={b:02X}");
        }
    }
}

/// Hashes a sensitive value (an e-mail, a token) into a key that does not
/// reveal it: 32 hex digits of SHA-256, domain-separated for ratesync.
///
/// A plain hash of a low-entropy value such as an e-mail address can be
/// reversed by guessing candidates; when the backend is not trusted with the
/// values, use [`hash_key_with_secret`].
///
/// ```
/// let k = ratesync::hash_key("alice@example.com");
/// assert_eq!(k.len(), 32);
/// assert_eq!(k, ratesync::hash_key("alice@example.com"));
/// ```
pub fn hash_key(value: impl AsRef<[u8]>) -> String {
    let mut h = Sha256::new();
    h.update(b"ratesync-key-v1\0");
    h.update(value.as_ref());
    hex32(&h.finalize())
}

/// Like [`hash_key`], keyed with `secret` (HMAC-SHA-256), so that nobody
/// without the secret can test guesses against the stored keys.
///
/// ```
/// let k = ratesync::hash_key_with_secret(b"s3cret", "alice@example.com");
/// assert_ne!(k, ratesync::hash_key("alice@example.com"));
/// ```
pub fn hash_key_with_secret(secret: &[u8], value: impl AsRef<[u8]>) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
    m.update(value.as_ref());
    hex32(&m.finalize().into_bytes())
}

fn hex32(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(32);
    for b in &bytes[..16] {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn encodes_odd_keys_into_the_safe_alphabet() {
        let k = StateKey::new("api").child("user 42/*:{é}.x=");
        assert_eq!(k.encoded(), "api.user=2042=2F=2A=3A=7B=C3=A9=7D=2Ex=3D");
        assert!(k
            .encoded()
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_=.".contains(&b)));
    }

    #[test]
    fn nesting_differs_from_a_dotted_key() {
        let a = StateKey::new("api").child("a").child("b");
        let b = StateKey::new("api").child("a.b");
        assert_ne!(a, b);
    }

    proptest! {
        #[test]
        fn encoding_is_injective(a in ".*", b in ".*") {
            prop_assume!(a != b);
            prop_assert_ne!(encode_part(&a), encode_part(&b));
        }
    }
}
