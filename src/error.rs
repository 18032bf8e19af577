//! The errors ratesync returns, each carrying what a user needs to act on it.

use std::time::Duration;

/// The next step for a failed connection, read from the client's message:
/// a service that is not there, a certificate not trusted for the name, a
/// refused login, a missing file. Empty when the message says it already.
fn connect_hint(message: &str) -> &'static str {
    let m = message.to_ascii_lowercase();
    let has = |words: &[&str]| words.iter().any(|w| m.contains(w));
    if has(&[
        "notvalidforname",
        "not valid for name",
        "certificate is not valid for",
    ]) {
        "; the server's certificate does not name the host in the url: connect by a name the certificate lists"
    } else if has(&[
        "unknownissuer",
        "invalid peer certificate",
        "certificate verify failed",
        "self-signed",
        "self signed",
    ]) {
        "; the server's certificate is not signed by a CA this client trusts: set tls_ca_file to the CA that signed it"
    } else if has(&[
        "password authentication failed",
        "authentication failed",
        "authorization violation",
        "wrongpass",
        "noauth",
        "role \"",
        "does not exist",
    ]) {
        "; the server refused the login: check the user, password and database (or credentials_file) the url names"
    } else if has(&[
        "parse error",
        "incompatible type",
        "invalid response",
        "unexpected response",
        "invalid http",
    ]) {
        "; the server at that address does not speak this engine's protocol: is the port another service's?"
    } else if has(&[
        "no such file",
        "tls_ca_file",
        "credentials_file",
        "cannot read",
        "permission denied",
    ]) {
        "; check the file the store's settings name"
    } else if has(&[
        "connection refused",
        "timed out",
        "timeout",
        "no route to host",
        "connection reset",
        "unreachable",
        "broken pipe",
        "eof",
    ]) {
        "; is the service running at that address? (README: Services)"
    } else {
        ""
    }
}

/// A result with ratesync's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong when configuring or using a limiter.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No permit could be had within the bound; nothing was taken.
    #[error(
        "limiter `{limiter}`: no permit within {}; the earliest {} ({})",
        fmt_duration(*.timeout),
        match .retry_after { Some(d) => format!("is {} away", fmt_duration(*d)), None => "is unknown".into() },
        .reason
    )]
    Timeout {
        /// The limiter that refused.
        limiter: String,
        /// The bound that was applied.
        timeout: Duration,
        /// How long until a permit could be had, where the engine knows.
        retry_after: Option<Duration>,
        /// What was exhausted: "rate" (a token bucket), "window" (a sliding
        /// window) or "concurrency".
        reason: &'static str,
    },

    /// A weighted request asked for more than the limit can ever grant at
    /// once (governor's `InsufficientCapacity`): it fails at once rather
    /// than wait forever.
    #[error("limiter `{limiter}`: a request of {requested} can never be granted, since the limit allows at most {capacity} at once (its burst or window limit); split the request, or raise the limit")]
    InsufficientCapacity {
        /// The limiter asked.
        limiter: String,
        /// The weight asked for.
        requested: u32,
        /// The most one request may weigh: the burst, or the window's limit.
        capacity: u32,
    },

    /// The limiter's store failed and the limiter fails closed.
    #[error("limiter `{limiter}`: store `{store}` failed: {source}; the limiter is fail_closed, so the request was denied (set on_backend_error = \"fail_open\" to admit during outages)")]
    Backend {
        /// The limiter that was asked.
        limiter: String,
        /// The store whose backend failed.
        store: String,
        /// What the backend said.
        #[source]
        source: BackendError,
    },

    /// A policy's store failed and the policy fails closed.
    #[error("policy `{policy}`: store `{store}` failed: {source}; the policy is fail_closed, so the request was refused (set on_backend_error = \"fail_open\" in [policies.{policy}] to admit during outages)")]
    PolicyBackend {
        /// The policy that was asked.
        policy: String,
        /// The store whose backend failed.
        store: String,
        /// What the backend said.
        #[source]
        source: BackendError,
    },

    /// No policy has this name.
    #[error("no policy named `{name}`; known policies: {}", if .known.is_empty() { "(none: add a [policies.NAME] table)".to_string() } else { .known.join(", ") })]
    UnknownPolicy {
        /// The name asked for.
        name: String,
        /// The names the registry knows.
        known: Vec<String>,
    },

    /// A store could not be reached when the registry was built.
    #[error("store `{store}` ({url}): cannot connect: {message}{}", connect_hint(.message))]
    Connect {
        /// The store's name.
        store: String,
        /// Its URL, without credentials.
        url: String,
        /// What the client said.
        message: String,
    },

    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),

    /// No limiter has this name.
    #[error("no limiter named `{name}`; known limiters: {}", if .known.is_empty() { "(none)".to_string() } else { .known.join(", ") })]
    UnknownLimiter {
        /// The name asked for.
        name: String,
        /// The names the registry knows.
        known: Vec<String>,
    },

    /// The operation cannot be done with these limiters.
    #[error("{0}")]
    Unsupported(String),
}

impl Error {
    /// What an engine's `connect` fails with: `message` about store `store`
    /// at `url` (already redacted).
    #[cfg(any(feature = "redis", feature = "postgres", feature = "nats"))]
    pub(crate) fn connect(store: &str, url: &str) -> impl Fn(String) -> Error {
        let (store, url) = (store.to_string(), url.to_string());
        // A client's message may quote the URL it was given, password and all.
        // One line, whatever the client printed (Redis parser errors span several).
        move |message| Error::Connect {
            store: store.clone(),
            url: url.clone(),
            message: crate::secret::redact(
                &message
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
        }
    }

    /// True for [`Error::Timeout`]: the limit, not a fault, refused the request.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::Timeout { .. })
    }

    /// How long until a retry could succeed, where known.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Timeout { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// A configuration error naming the source, the table and key at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{source_name}: {path}: {message}")]
pub struct ConfigError {
    /// The file the configuration came from, or `<string>`.
    pub source_name: String,
    /// The dotted path of the table or key at fault (`limiters.api.burst`).
    pub path: String,
    /// What is wrong and, where possible, what to do.
    pub message: String,
}

impl ConfigError {
    pub(crate) fn new(
        source_name: impl Into<String>,
        path: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            source_name: source_name.into(),
            path: path.into(),
            message: message.into(),
        }
    }
}

/// A failure inside an engine's backend (connection lost, timeout, bad reply).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{engine}: {message}")]
pub struct BackendError {
    /// The engine kind (`redis`, `postgres`, ...).
    pub engine: &'static str,
    /// What went wrong, without credentials.
    pub message: String,
    /// True when a lost compare-and-set race exhausted its retries.
    pub cas_exhausted: bool,
}

impl BackendError {
    /// A backend failure of `engine` described by `message`.
    pub fn new(engine: &'static str, message: impl Into<String>) -> Self {
        Self {
            engine,
            message: message.into(),
            cas_exhausted: false,
        }
    }
}

/// Formats a duration for people: `250 ms`, `1.5 s`.
pub(crate) fn fmt_duration(d: Duration) -> String {
    if d == Duration::MAX {
        "forever".to_string()
    } else if d < Duration::from_millis(1) {
        format!("{} µs", d.as_micros())
    } else if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{:.3} s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_errors_name_their_cause_and_the_next_step() {
        let e = |m: &str| Error::connect("s", "redis://h:1")(m.to_string()).to_string();
        for (message, hint) in [
            (
                "Connection refused (os error 111)",
                "is the service running",
            ),
            (
                "db error: FATAL: role \"x\" does not exist",
                "refused the login",
            ),
            (
                "password authentication failed for user \"u\"",
                "refused the login",
            ),
            (
                "credentials_file /x.creds: No such file or directory",
                "check the file",
            ),
            (
                "tls_ca_file /ca.pem: No such file or directory (os error 2)",
                "check the file",
            ),
            ("invalid peer certificate: UnknownIssuer", "set tls_ca_file"),
            (
                "invalid peer certificate: NotValidForName",
                "does not name the host",
            ),
            (
                "certificate not valid for name \"127.0.0.1\"",
                "does not name the host",
            ),
            (
                "Incompatible type - Parse error at 1\nUnexpected `78`\n",
                "another service's",
            ),
        ] {
            let text = e(message);
            assert!(text.contains(hint), "{message:?} -> {text}");
            assert!(!text.contains('\n'), "one line: {text:?}");
        }
        // Only the cause's own step: a refused login is not "is it running?".
        assert!(!e("role \"x\" does not exist").contains("running"));
    }
}
