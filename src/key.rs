//! Key encoding and hashing: any caller key maps to one backend-safe key of
//! bounded length, and no two collide.
//!
//! Caller keys are IPs, user ids, e-mails, unicode, `*`, spaces, dots, and
//! whatever a hostile client puts in a header: any bytes, any length. Every
//! engine addresses state by the encoded form built here, which uses only
//! `[-_=.a-zA-Z0-9]` (the characters NATS KV allows, and safe in Redis keys,
//! SQL text and file names) and is at most [`MAX_ENCODED_LEN`] bytes long.
//!
//! **The rule.** Letters, digits, `-` and `_` stand for themselves, every
//! other byte becomes `=XX` (upper-case hex), and `.` separates the parts of
//! a key, so `("a.b")` and `("a", "b")` differ. When that form would be longer
//! than [`MAX_ENCODED_LEN`], the key is stored as its first
//! [`DIGEST_PREFIX_LEN`] bytes (for people reading the store), `=Z`, and the
//! 64 hex digits of the SHA-256 of the whole encoded form. `=Z` never occurs
//! in the short form (an escape is `=` and two hex digits), so a digested key
//! cannot equal a short one, and two digested keys are equal only if SHA-256
//! collides. The bound exists because backends break on long keys: NATS
//! drops the connection when a protocol line passes 4 KiB and PostgreSQL
//! refuses index rows over 2,704 bytes, and a limiter whose backend fails on
//! a key a client chose is a bypass under `fail_open`.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::fmt::Write as _;
use std::sync::Arc;

/// The longest encoded state key, in bytes. Longer keys are digested (see
/// the module docs).
pub const MAX_ENCODED_LEN: usize = 256;

/// How much of an over-long encoded key is kept in front of its digest.
pub const DIGEST_PREFIX_LEN: usize = MAX_ENCODED_LEN - 2 - 64;

/// The address of one piece of limiter state: a limiter and, for per-key
/// limiters, the caller's key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StateKey {
    limiter: Arc<str>,
    encoded: Arc<str>,
    /// `encoded` under this process's keyed SipHash (see [`StateKey::hash`]).
    hash: u64,
}

/// This process's keyed SipHash, with a key drawn at random once: hashes of
/// encoded keys that clients cannot aim collisions at.
fn process_hash(encoded: &str) -> u64 {
    use std::hash::BuildHasher;
    static KEYED: std::sync::OnceLock<std::hash::RandomState> = std::sync::OnceLock::new();
    KEYED
        .get_or_init(std::hash::RandomState::new)
        .hash_one(encoded)
}

impl StateKey {
    /// The state of limiter `limiter` itself (no caller key).
    pub fn new(limiter: &str) -> Self {
        let mut out = Bounded::new(limiter.len());
        out.push_part(limiter);
        let encoded = out.finish();
        Self {
            limiter: limiter.into(),
            hash: process_hash(&encoded),
            encoded: encoded.into(),
        }
    }

    /// The state of `self` narrowed to caller key `key`.
    pub fn child(&self, key: &str) -> Self {
        let mut out = Bounded::new(self.encoded.len() + 1 + key.len());
        out.push_safe(self.encoded.as_bytes());
        out.push_safe(b".");
        out.push_part(key);
        let encoded = out.finish();
        Self {
            limiter: self.limiter.clone(),
            hash: process_hash(&encoded),
            encoded: encoded.into(),
        }
    }

    /// The limiter's name.
    pub fn limiter(&self) -> &str {
        &self.limiter
    }

    /// The backend-safe, collision-free form: `[-_=.a-zA-Z0-9]` only, at
    /// most [`MAX_ENCODED_LEN`] bytes.
    pub fn encoded(&self) -> &str {
        &self.encoded
    }

    /// The encoded key's hash under a keyed SipHash whose key this process
    /// drew at random, computed once when the key was made: the in-process
    /// engine shards and looks keys up by it without hashing per decision,
    /// and clients cannot choose keys that collide.
    pub fn hash(&self) -> u64 {
        self.hash
    }
}

/// Encodes one part of a key (see the module docs), bounded like a state key.
pub fn encode_part(part: &str) -> String {
    let mut out = Bounded::new(part.len());
    out.push_part(part);
    out.finish()
}

/// An encoded key being built: kept as text up to [`MAX_ENCODED_LEN`], then
/// hashed as it goes, so a 1 MiB key costs one pass and no 3 MiB string.
struct Bounded {
    text: String,
    digest: Option<Sha256>,
}

impl Bounded {
    fn new(hint: usize) -> Self {
        Self {
            text: String::with_capacity(hint.min(MAX_ENCODED_LEN + 3)),
            digest: None,
        }
    }

    /// Appends bytes that are already in the safe alphabet.
    fn push_safe(&mut self, bytes: &[u8]) {
        match &mut self.digest {
            Some(h) => h.update(bytes),
            None => {
                // Safe bytes are ASCII, so this cannot fail.
                self.text
                    .push_str(std::str::from_utf8(bytes).unwrap_or_default());
                if self.text.len() > MAX_ENCODED_LEN {
                    let mut h = Sha256::new();
                    h.update(self.text.as_bytes());
                    self.text.truncate(DIGEST_PREFIX_LEN);
                    self.digest = Some(h);
                }
            }
        }
    }

    fn push_part(&mut self, part: &str) {
        const HEX: &[u8; 16] = b"0123456789ABCDEF";
        let bytes = part.as_bytes();
        let mut run = 0;
        for (i, &b) in bytes.iter().enumerate() {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
                continue;
            }
            self.push_safe(&bytes[run..i]);
            self.push_safe(&[b'=', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
            run = i + 1;
        }
        self.push_safe(&bytes[run..]);
    }

    fn finish(self) -> String {
        let Some(h) = self.digest else {
            return self.text;
        };
        let mut text = self.text;
        text.push_str("=Z");
        for b in h.finalize() {
            let _ = write!(text, "{b:02x}");
        }
        text
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

    fn safe(s: &str) -> bool {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_=.".contains(&b))
    }

    #[test]
    fn hash_key_has_a_known_answer() {
        // SHA-256("ratesync-key-v1\0alice@example.com"), first 16 bytes: a
        // change of domain string or truncation would move every stored key.
        assert_eq!(
            hash_key("alice@example.com"),
            "a18cfc5960a72596b5c738fb175d1edd"
        );
    }

    #[test]
    fn long_keys_are_bounded_and_distinct() {
        let base = StateKey::new("api");
        let long = "a".repeat(MAX_ENCODED_LEN * 4);
        let mut other = long.clone();
        other.pop();
        other.push('b');
        let (a, b) = (base.child(&long), base.child(&other));
        assert_eq!(a.encoded().len(), MAX_ENCODED_LEN);
        assert_eq!(b.encoded().len(), MAX_ENCODED_LEN);
        assert_ne!(a, b, "keys differing in their last byte stay apart");
        assert!(safe(a.encoded()));
        assert_eq!(&a.encoded()[DIGEST_PREFIX_LEN..DIGEST_PREFIX_LEN + 2], "=Z");
        assert!(a.encoded().starts_with("api.aaaa"));
        // Bytes that triple under encoding, and 1 MiB of them.
        let bytes = "\u{1}".repeat(1 << 20);
        let k = base.child(&bytes);
        assert_eq!(k.encoded().len(), MAX_ENCODED_LEN);
        assert!(safe(k.encoded()));
        // Nesting a digested key keeps it bounded and distinct.
        assert_ne!(a.child("x"), b.child("x"));
        assert_eq!(a.child("x").encoded().len(), MAX_ENCODED_LEN);
        // Exactly at the bound the short form is kept.
        let fits = "a".repeat(MAX_ENCODED_LEN - 4);
        assert_eq!(base.child(&fits).encoded(), format!("api.{fits}"));
        assert_ne!(
            base.child(&fits).encoded(),
            base.child(&format!("{fits}a")).encoded()
        );
    }

    /// A key and a near-miss of it: one byte changed, an escape spelled out,
    /// a byte added or removed.
    fn near_pairs() -> impl Strategy<Value = (String, String)> {
        let len = prop_oneof![0usize..8, 180usize..200, 250usize..270, 600usize..700];
        (len, any::<u64>(), 0u8..5).prop_map(|(n, seed, how)| {
            let mut rng = seed;
            let mut next = move || {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng
            };
            let alphabet: Vec<char> = "ab=.-_Z9 \u{e9}%".chars().collect();
            let a: String = (0..n)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect();
            let mut chars: Vec<char> = a.chars().collect();
            let at = if chars.is_empty() {
                0
            } else {
                (next() as usize) % chars.len()
            };
            match how {
                0 if !chars.is_empty() => chars[at] = if chars[at] == 'a' { 'b' } else { 'a' },
                1 if !chars.is_empty() => {
                    // The escape of the character, written out literally.
                    let esc = encode_part(&chars[at].to_string());
                    chars.splice(at..=at, esc.chars());
                }
                2 if !chars.is_empty() => {
                    chars.remove(at);
                }
                3 => chars.push('.'),
                _ => chars.insert(at, '='),
            }
            (a, chars.into_iter().collect())
        })
    }

    proptest! {
        #[test]
        fn encoding_is_injective(a in ".*", b in ".*") {
            prop_assume!(a != b);
            prop_assert_ne!(encode_part(&a), encode_part(&b));
        }

        #[test]
        fn near_misses_never_collide((a, b) in near_pairs()) {
            prop_assume!(a != b);
            let base = StateKey::new("api");
            let (ka, kb) = (base.child(&a), base.child(&b));
            prop_assert_ne!(&ka, &kb);
            prop_assert!(ka.encoded().len() <= MAX_ENCODED_LEN);
            prop_assert!(safe(ka.encoded()) && safe(kb.encoded()));
            // Split differently into parts, the same text still differs.
            prop_assert_ne!(base.child(&a).child(&b), base.child(&format!("{a}.{b}")));
        }
    }
}
