//! Secrets (passwords, tokens, webhook URLs) and the one redaction every
//! message, log line and `Debug` output goes through.
//!
//! A configuration value that may carry a credential is a [`Secret`]: its
//! `Debug` is `***`, it has no `Display`, and the only ways to the text are
//! [`Secret::expose`] (for the client that needs it) and
//! [`Secret::redacted`] (for people). [`redact`] removes credentials from
//! any text that names a URL or DSN: the `user:password@` of a URL, the
//! values of credential-like query parameters and `key=value` DSN fields
//! (`password = 'x y'` included), and the path of an `http(s)` URL, where
//! webhook services put their tokens (`https://hooks.slack.com/services/T/B/XXX`).
//!
//! ```
//! use ratesync::secret::{redact, Secret};
//! assert_eq!(redact("redis://u:hunter2@cache:6379/0"), "redis://***@cache:6379/0");
//! assert_eq!(redact("host=db password='correct horse' user=app"), "host=db password=*** user=app");
//! assert_eq!(redact("https://hooks.slack.com/services/T0/B0/XyZ"), "https://hooks.slack.com/***");
//! let s = Secret::from("hunter2");
//! assert_eq!(format!("{s:?}"), "***");
//! assert_eq!(s.expose(), "hunter2");
//! ```

use serde::Deserialize;
use std::fmt;

/// A value that must not be shown: `Debug` prints `***`.
#[derive(Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The value itself, for the client that must send it. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The value with credentials removed (see [`redact`]), for messages.
    pub fn redacted(&self) -> String {
        redact(&self.0)
    }

    /// True when the value is the empty string.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// SHA-256 of a token: presented tokens are compared with the expected
/// one digest to digest, so the time a comparison takes says nothing of
/// the token, not even its length.
#[cfg_attr(not(feature = "serve"), allow(dead_code))]
pub(crate) fn token_digest(token: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes()).into()
}

/// `a == b` in a time that depends on their length only, never on where
/// they differ.
#[cfg_attr(not(feature = "serve"), allow(dead_code))]
pub(crate) fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Self(s)
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Self(s.to_string())
    }
}

/// Names of query parameters and DSN fields whose values are credentials
/// (compared case-insensitively; a name ending in one of these counts too,
/// so `sslpassword`, `x-api-key` and `access_token` are covered).
const CREDENTIAL_NAMES: &[&str] = &[
    "password",
    "passwd",
    "pwd",
    "pass",
    "token",
    "secret",
    "key",
    "auth",
    "authorization",
    "signature",
    "sig",
    "credentials",
];

fn is_credential_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    CREDENTIAL_NAMES
        .iter()
        .any(|c| name == *c || name.ends_with(c))
}

/// `text` with every credential it carries replaced by `***` (see the module docs).
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    // URLs first: each `scheme://...` up to the next white space or quote.
    while let Some(at) = rest.find("://") {
        // The scheme: the ASCII letters, digits, `+ - .` right before `://`
        // (found by the fuzzer: stepping one byte past a multi-byte
        // character instead of one character panicked on `"\t/Ւ://*"`).
        let scheme_start = rest[..at]
            .char_indices()
            .rev()
            .find(|&(_, c)| !(c.is_ascii_alphanumeric() || "+-.".contains(c)))
            .map_or(0, |(i, c)| i + c.len_utf8());
        let end = rest[at..]
            .find(|c: char| c.is_whitespace() || "\"'<>`()".contains(c))
            .map_or(rest.len(), |i| at + i);
        out.push_str(&redact_fields(&rest[..scheme_start]));
        out.push_str(&redact_one_url(&rest[scheme_start..end]));
        rest = &rest[end..];
    }
    out.push_str(&redact_fields(rest));
    out
}

/// One URL: user info, credential query values, and an http(s) path.
fn redact_one_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let scheme = url[..scheme_end - 3].to_ascii_lowercase();
    let after = &url[scheme_end..];
    let authority_end = after.find(['/', '?', '#']).unwrap_or(after.len());
    let (authority, tail) = after.split_at(authority_end);
    let host = match authority.rfind('@') {
        Some(i) => format!("***{}", &authority[i..]),
        None => authority.to_string(),
    };
    let mut out = format!("{}{host}", &url[..scheme_end]);
    if scheme == "http" || scheme == "https" {
        // Webhook services put the token in the path or the query.
        if tail == "/" {
            out.push('/');
        } else if !tail.is_empty() {
            out.push_str("/***");
        }
        return out;
    }
    match tail.split_once('?') {
        None => out.push_str(tail),
        Some((path, query)) => {
            out.push_str(path);
            out.push('?');
            let parts: Vec<String> = query
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, _)) if is_credential_name(k) => format!("{k}=***"),
                    _ => kv.to_string(),
                })
                .collect();
            out.push_str(&parts.join("&"));
        }
    }
    out
}

/// `key = value` fields (libpq DSNs, `Authorization: Bearer ...` headers)
/// whose key names a credential: the value, quoted or not, becomes `***`.
fn redact_fields(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let mut copied = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b != b'=' && b != b':' {
            i += 1;
            continue;
        }
        // The word before the separator.
        let mut s = i;
        while s > 0 && bytes[s - 1] == b' ' {
            s -= 1;
        }
        let word_end = s;
        while s > 0 && (bytes[s - 1].is_ascii_alphanumeric() || b"_-".contains(&bytes[s - 1])) {
            s -= 1;
        }
        let word = &text[s..word_end];
        if word.is_empty() || !is_credential_name(word) {
            i += 1;
            continue;
        }
        // The value after it: spaces, then 'quoted', "quoted" or a bare word
        // (for `Authorization: Bearer x`, the scheme word and the token).
        let mut v = i + 1;
        while v < bytes.len() && bytes[v] == b' ' {
            v += 1;
        }
        let value_start = v;
        if v < bytes.len() && (bytes[v] == b'\'' || bytes[v] == b'"') {
            let quote = bytes[v];
            v += 1;
            while v < bytes.len() && bytes[v] != quote {
                if bytes[v] == b'\\' {
                    v += 1;
                }
                v += 1;
            }
            v = (v + 1).min(bytes.len());
        } else {
            let bare_end = |mut v: usize| {
                while v < bytes.len() && !b" ,;&)\n\r\t".contains(&bytes[v]) {
                    v += 1;
                }
                v
            };
            let first_end = bare_end(v);
            let first = &text[v..first_end];
            v = first_end;
            if b == b':'
                && ["bearer", "basic", "token"].contains(&first.to_ascii_lowercase().as_str())
            {
                let mut w = v;
                while w < bytes.len() && bytes[w] == b' ' {
                    w += 1;
                }
                v = bare_end(w);
            }
        }
        if v == value_start {
            i += 1;
            continue;
        }
        out.push_str(&text[copied..i + 1]);
        if value_start > i + 1 {
            out.push_str(&text[i + 1..value_start]);
        }
        out.push_str("***");
        copied = v;
        i = v;
    }
    out.push_str(&text[copied..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn hides(text: &str, secret: &str) -> String {
        let r = redact(text);
        assert!(!r.contains(secret), "{secret:?} survived in {r:?}");
        r
    }

    #[test]
    fn urls_lose_their_user_info() {
        assert_eq!(
            hides(
                "postgres://app:hunter2@db:5432/x?sslmode=require",
                "hunter2"
            ),
            "postgres://***@db:5432/x?sslmode=require"
        );
        assert_eq!(
            hides("redis://:p%40ss@h:6379", "p%40ss"),
            "redis://***@h:6379"
        );
        assert_eq!(hides("nats://tok3n@h:4222", "tok3n"), "nats://***@h:4222");
        // An `@` in the path is not user info.
        assert_eq!(redact("redis://h:6379/0?x=a@b"), "redis://h:6379/0?x=a@b");
    }

    #[test]
    fn credential_query_values_go() {
        assert_eq!(
            hides("postgres://h/db?sslmode=require&password=s3cr3t", "s3cr3t"),
            "postgres://h/db?sslmode=require&password=***"
        );
        assert_eq!(
            hides("nats://h:4222?token=abc123", "abc123"),
            "nats://h:4222?token=***"
        );
    }

    #[test]
    fn http_paths_and_queries_go() {
        hides(
            "https://hooks.slack.com/services/T000/B000/XXXXsecret",
            "XXXXsecret",
        );
        hides("http://127.0.0.1:9/hook?token=abc123", "abc123");
        assert_eq!(
            redact("https://events.pagerduty.com/"),
            "https://events.pagerduty.com/"
        );
        // Inside a longer message, as reqwest and tokio-postgres write them.
        assert_eq!(
            hides(
                "error sending request for url (https://h.example/hook/T0k3n): timed out",
                "T0k3n"
            ),
            "error sending request for url (https://h.example/***): timed out"
        );
    }

    #[test]
    fn dsn_fields_go_in_every_spelling() {
        assert_eq!(
            hides("host=db password=hunter2 user=app", "hunter2"),
            "host=db password=*** user=app"
        );
        assert_eq!(
            hides("host=db password = hunter2 user=app", "hunter2"),
            "host=db password = *** user=app"
        );
        assert_eq!(
            hides("host=db password='correct horse' user=app", "horse"),
            "host=db password=*** user=app"
        );
        assert_eq!(
            hides(r"host=db password='it\'s here' user=app", "here"),
            "host=db password=*** user=app"
        );
        hides("sslpassword=k3y host=db", "k3y");
        hides("Authorization: Bearer abc.def", "abc.def");
        hides("X-Api-Key: zzz", "zzz");
    }

    #[test]
    fn ordinary_text_is_unchanged() {
        for t in [
            "store `main` (redis://127.0.0.1:6379/0): cannot connect",
            "limiters.api.burst: must be >= 1, got 0",
            "host=db user=app dbname=test",
            "key prefix: ratesync",
        ] {
            assert_eq!(redact(t), t);
        }
    }

    #[test]
    fn multi_byte_text_around_urls_is_safe() {
        assert_eq!(redact("\t/Ւ://*\0"), "\t/Ւ://*\0");
        assert_eq!(
            redact("ключ redis://u:pw@h ключ"),
            "ключ redis://***@h ключ"
        );
        assert_eq!(redact("éredis://u:pw@h"), "éredis://***@h");
    }

    proptest::proptest! {
        /// Any text: no panic, and a password in a URL's user info never survives.
        #[test]
        fn any_text_is_redacted_without_panic(text in "\\PC{0,40}", pw in "[a-zA-Z0-9]{6,12}") {
            let _ = redact(&text);
            let url = format!("{text} redis://user:{pw}@h:1/0 {text}");
            let out = redact(&url);
            proptest::prop_assert!(!out.contains(&format!(":{pw}@")), "{}", out);
        }
    }

    #[test]
    fn secrets_debug_as_stars() {
        let s = Secret::from("hunter2");
        assert_eq!(format!("{s:?}"), "***");
        assert_eq!(format!("{:?}", Some(s.clone())), "Some(***)");
        assert_eq!(Secret::from("redis://u:p@h").redacted(), "redis://***@h");
    }
}
